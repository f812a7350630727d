"""The workdir path layer: local and bucket paths through the same `etils.epath` calls, and whole
files written by several writers at once."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

from jvision.errors import UserError
from jvision.safety import files


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
    """`gs://…` paths served from a local directory by epath's own mocking hook (no network)."""
    from etils.epath import backend, gpath, testing

    root = tmp_path / "bucket_root"

    def local(path):
        path = os.fspath(path)
        return str(root / path.removeprefix("gs://")) if path.startswith("gs://") else path

    def redirect(name):
        def call(original, path, *args, **kwargs):
            del original
            args = [local(a) if isinstance(a, (str, os.PathLike)) else a for a in args]
            return getattr(backend.os_backend, name)(local(path), *args, **kwargs)

        return call

    names = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rename")
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # Else TF's GCS client.
    with testing.mock_epath(**{name: redirect(name) for name in names + ("replace", "stat")}):
        yield root


def test_local_paths_are_made_absolute_and_bucket_paths_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(files.path("runs/a")) == str(tmp_path / "runs" / "a")
    assert str(files.path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    assert str(files.path("gs://bucket/runs/a") / files.RESULTS_FILE) == (
        "gs://bucket/runs/a/results.json"
    )
    assert files.is_uri("gs://b/x") and not files.is_uri("/tmp/x")


def test_json_and_pictures_round_trip_through_a_bucket_path(fake_bucket):
    run = files.path("gs://bucket/run")
    run.mkdir(parents=True, exist_ok=True)
    files.write_json(run / files.RESULTS_FILE, {"step": 4, "metrics": {"test/x": 1.5}})
    assert files.read_json(run / files.RESULTS_FILE) == {"step": 4, "metrics": {"test/x": 1.5}}
    picture = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    files.save_png(run / "picture.png", picture)
    from PIL import Image

    on_disk = fake_bucket / "bucket" / "run"
    np.testing.assert_array_equal(np.asarray(Image.open(on_disk / "picture.png")), picture)
    assert sorted(os.listdir(on_disk)) == ["picture.png", "results.json"]  # No temporary left.


def test_a_bucket_read_cut_short_by_a_rewrite_is_read_again(fake_bucket, monkeypatch):
    """Seen against the emulator: the lease read while its heartbeat rewrote it came back
    without its closing brace (the new object, cut at the old one's length)."""
    lease = files.path("gs://bucket/run/lease.json")
    lease.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(lease, {"renewed": 1796203702.2543387, "token": "t"})
    whole = lease.read_text()
    cut = [whole[:-1], whole[:-2]]  # Two reads of a rewrite in flight, then the whole file.
    read = type(lease).read_text
    monkeypatch.setattr(type(lease), "read_text", lambda p: cut.pop(0) if cut else read(p))
    assert files.read_json(lease) == {"renewed": 1796203702.2543387, "token": "t"}
    cut[:] = [whole[:-1]] * 3  # Never whole: the parse error, after three reads.
    with pytest.raises(ValueError):
        files.read_json(lease)
    assert not cut


def test_a_damaged_json_file_on_disk_is_an_error_at_once(tmp_path):
    target = tmp_path / "results.json"
    target.write_text('{"step": 4')
    with pytest.raises(ValueError):
        files.read_json(files.path(target))


def test_json_writes_replace_the_file_whole(tmp_path):
    target = files.path(tmp_path) / "config.json"
    files.write_json(target, {"a": 1})
    files.write_json(target, {"b": [1, 2]})
    assert files.read_json(target) == {"b": [1, 2]}
    assert os.listdir(tmp_path) == ["config.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = files.path(tmp_path) / "results.json"
    files.write_json(target, {"step": 2})

    def full(self, other):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(target), "replace", full)  # The rename fails: a full disk.
    with pytest.raises(OSError):
        files.write_json(target, {"step": 4})
    assert files.read_json(target) == {"step": 2}
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_run_is_finished_when_its_results_step_is_committed(tmp_path):
    """The sweep's "done": results.json and the sealed checkpoint of its step (a results.json
    naming a step whose save failed must not make a seed look finished)."""
    run = files.path(tmp_path)
    assert files.finished_step(run) is None
    files.write_json(run / files.RESULTS_FILE, {"step": 4, "metrics": {}})
    assert files.finished_step(run) is None  # No checkpoint 4.
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    assert files.finished_step(run) is None  # Not sealed: not committed by jvision.
    (tmp_path / "checkpoints" / "4" / files.CHECKSUMS_FILE).write_text("{}")
    assert files.finished_step(run) == 4


def test_glob_characters_reach_orbax_through_a_link(tmp_path):
    odd = tmp_path / "run[1]"
    odd.mkdir()
    link = files.without_glob_characters(files.path(odd))
    assert "[" not in str(link) and os.path.realpath(link) == str(odd)
    assert files.without_glob_characters(files.path(tmp_path)) == files.path(tmp_path)
    with pytest.raises(UserError, match="a bucket workdir cannot contain"):
        files.without_glob_characters(files.path("gs://bucket/run[1]"))


def test_two_processes_writing_one_file_never_fail_and_leave_it_whole(tmp_path):
    """Each writer renames a temporary file of its own (pid and random bits in its name): no
    rename finds its file gone because the other writer finished first, and the file is always
    one writer's whole picture."""
    target = tmp_path / "x.png"
    script = (
        "import sys; import numpy as np\n"
        "from jvision.safety import files\n"
        "picture = np.full((16, 16, 1), int(sys.argv[2]), np.uint8)\n"
        "for _ in range(300):\n"
        "    files.save_png(files.path(sys.argv[1]), picture)\n"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(target), str(value)], cwd=ROOT)
        for value in (0, 255)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    picture = np.asarray(Image.open(target))
    assert picture.shape == (16, 16) and picture.min() == picture.max() in (0, 255)
    assert os.listdir(tmp_path) == ["x.png"]  # No temporary file left.


def test_a_failed_write_names_the_file_being_written(tmp_path, monkeypatch):
    """A full disk while writing names the file that was being written (not a temporary)."""
    import errno

    from jvision.safety import failures

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(files.path(tmp_path)), "write_bytes", full)
    with pytest.raises(OSError) as error:
        files.write_json(files.path(tmp_path) / "results.json", {})
    assert failures.storage_failure(error.value) == (
        f"no space left on the device ({tmp_path}/results.json)"
    )
