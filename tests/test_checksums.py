"""Checksums of a checkpoint's files: what is covered, what is left out, what counts as damage."""

import pytest

from jvision.safety import checksums


@pytest.fixture
def step_dir(tmp_path):
    """A checkpoint step directory's shape: items in folders, and Orbax's commit files."""
    (tmp_path / "model" / "d").mkdir(parents=True)
    (tmp_path / "model" / "d" / "0a1b").write_bytes(b"\x00\x01array bytes")
    (tmp_path / "model" / "manifest.ocdbt").write_bytes(b"manifest")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "metadata").write_text('{"step": 4}')
    (tmp_path / "commit_success.txt").write_text("written at the commit")
    (tmp_path / "_CHECKPOINT_METADATA").write_text("{}")
    return tmp_path


def test_files_are_every_file_but_orbax_commit_files(step_dir):
    assert checksums.covered_files(step_dir) == [
        "meta/metadata",
        "model/d/0a1b",
        "model/manifest.ocdbt",
    ]


def test_a_sealed_checkpoint_verifies(step_dir):
    checksums.seal(step_dir)
    assert checksums.verify(step_dir) == ""
    (step_dir / "commit_success.txt").write_text("rewritten by Orbax")  # Not covered.
    assert checksums.verify(step_dir) == ""


@pytest.mark.parametrize(
    "damage, problem",
    [
        (
            lambda d: (d / "model" / "d" / "0a1b").write_bytes(b"\x00\x02array bytes"),
            "model/d/0a1b has changed",
        ),
        (lambda d: (d / "meta" / "metadata").unlink(), "meta/metadata is missing"),
        (lambda d: (d / checksums.CHECKSUMS_FILE).write_text("{not json"), "is unreadable"),
        (lambda d: (d / checksums.CHECKSUMS_FILE).unlink(), "it has no jvision_checksums.json"),
    ],
    ids=["changed", "missing", "unreadable checksums", "unsealed"],
)
def test_damage_is_named(step_dir, damage, problem):
    checksums.seal(step_dir)
    damage(step_dir)
    assert problem in checksums.verify(step_dir)


def test_an_unsealed_step_is_never_trusted(step_dir):
    """A checkpoint jvision did not seal cannot vouch for its bytes: flipped bytes in a step
    whose checksum file was deleted must not load."""
    assert checksums.verify(step_dir) == "it has no jvision_checksums.json"
