"""`python -m jvision.export` and `Run.export`: a workdir's predict as one `jax.export` file that a
process without jvision runs, for any batch size, with the outputs of `Run.predict`."""

import subprocess
import sys

import numpy as np
import pytest
from helpers import run_module

from jvision import evaluate

# The loader a user writes: JAX and NumPy only. jvision is made unimportable first, so that
# nothing of it can be used by accident.
LOADER = """
import sys
sys.modules["jvision"] = None
try:
    import jvision
except ImportError:
    pass
else:
    raise SystemExit("jvision was importable")
import jax, numpy as np
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
images = np.load(sys.argv[2])
outputs = [exported.call(images[i : i + 1]) for i in range(len(images))]  # One at a time.
whole = exported.call(images)  # All at once: the batch size is symbolic.
flat = {}
for name in outputs[0]:
    if outputs[0][name] is not None:
        flat[name] = np.concatenate([np.asarray(o[name]) for o in outputs])
        flat["whole_" + name] = np.asarray(whole[name])
np.savez(sys.argv[3], **flat)
"""


@pytest.mark.parametrize("name", ["vae_mnist", "ssd_mnist", "encoding_detector_mnist"])
def test_an_exported_predict_runs_without_jvision_and_gives_predicts_outputs(
    trained, tmp_path, name
):
    """`Run.predict` on 8 images spreads them one per device; the exported predict called on
    one image at a time runs the same computation on the same shapes: the outputs are equal,
    bit for bit. Called on all 8 at once (another batch size, one device) the continuous
    outputs agree to float32 rounding and the detections' count is the same."""
    workdir = trained(name).workdir
    exported = tmp_path / "predict.jax"
    result = run_module("jvision.export", f"--workdir={workdir}", f"--out={exported}")
    assert result.returncode == 0, result.stderr[-3000:]
    run = evaluate.load(workdir)
    images = run.examples(n=8)["image"]
    np.save(tmp_path / "images.npy", images)
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            LOADER,
            str(exported),
            str(tmp_path / "images.npy"),
            str(tmp_path / "outputs.npz"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    expected = {k: v for k, v in run.predict(images).items() if v is not None}
    assert {k for k in outputs if not k.startswith("whole_")} == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(outputs[key], value, err_msg=key)
        if value.dtype.kind == "f" and key != "boxes":
            np.testing.assert_allclose(outputs["whole_" + key], value, rtol=1e-4, atol=1e-5)
    if "valid" in expected:
        assert outputs["whole_valid"].sum() == expected["valid"].sum()


@pytest.mark.parametrize(
    "out, message",
    [("{tmp}", "is a directory; give a file name"), ("{file}/x.jax", "is a file, not a directory")],
)
def test_a_bad_destination_is_one_line_before_the_model_is_read(tmp_path, out, message):
    file = tmp_path / "a_file"
    file.write_text("")
    result = run_module(
        "jvision.export",
        f"--workdir={tmp_path / 'missing'}",  # Never reached.
        "--out=" + out.format(tmp=tmp_path, file=file),
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("jvision: error:")]
    assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr
