"""A failing storage recognised however a library reports it, and named in one line; closing a run
without hiding the error that stopped it."""

import errno

import pytest

from jvision.safety import failures
from jvision.safety.failures import storage_failure


def test_an_os_error_names_its_file():
    error = OSError(errno.ENOSPC, "No space left on device", "/tmp/run/results.json")
    assert storage_failure(error) == "no space left on the device (/tmp/run/results.json)"


def test_a_cause_deep_in_the_chain_is_found(tmp_path):
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError as inner:
            raise RuntimeError("Save Finalize thread failed") from inner
    except RuntimeError as outer:
        assert storage_failure(outer) == "read-only file system"


@pytest.mark.parametrize(
    "message, expected",
    [
        (  # tensorstore, through Orbax; the file's folder was removed since (a failed save's).
            'RESOURCE_EXHAUSTED: Error writing local file "{d}/checkpoints/4.orbax-checkpoint-tmp'
            '/model/_sharding": Failed to write 9153 bytes: No space left on device '
            "[os_error_code='28']",
            "no space left on the device ({d}/checkpoints/4.orbax-checkpoint-tmp/model/_sharding)",
        ),
        (  # TensorFlow's summary writer: a device name that looks like a path comes first.
            "{{function_node __wrapped__FlushSummaryWriter_device_/job:localhost/replica:0/task:0"
            "/device:CPU:0}} {d}/events.out.tfevents.1; No space left on device",
            "no space left on the device ({d}/events.out.tfevents.1)",
        ),
        ("Permission denied: '{d}/x'", "permission denied ({d}/x)"),
    ],
    ids=["tensorstore", "tensorflow", "permission"],
)
def test_libraries_messages(tmp_path, message, expected):
    (tmp_path / "checkpoints").mkdir()
    error = ValueError(message.replace("{d}", str(tmp_path)))
    assert storage_failure(error) == expected.replace("{d}", str(tmp_path))


def test_other_errors_are_not_storage_failures():
    assert storage_failure(ValueError("shapes (3,) and (4,) do not match")) is None
    assert storage_failure(OSError(errno.ECONNREFUSED, "Connection refused")) is None


def test_closing_reports_the_first_error_unless_another_is_on_its_way(caplog):
    def fail(message):
        def closer():
            raise OSError(message)

        return closer

    with pytest.raises(OSError, match="first"), failures.Closing(fail("second"), fail("first")):
        pass  # Closed last-added first: "first" is raised, "second" logged.
    assert "second" in caplog.text
    with pytest.raises(ValueError, match="the run's own"), failures.Closing(fail("closing")):
        raise ValueError("the run's own")  # A closing error must not hide it.
