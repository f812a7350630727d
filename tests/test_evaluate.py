"""`jvision.evaluate`: any workdir's metrics, pictures and predictions, from the workdir alone."""

import json

import numpy as np
import pytest
from helpers import run_module

from jvision import evaluate, summaries
from jvision.errors import UserError
from jvision.safety import checksums, files

FAMILIES = [
    ("vae_mnist",),
    ("draw_mnist",),
    ("ssd_mnist",),
    ("patchvae_mnist",),
    ("patchvae_mnist", "--config.model.kind=vae"),
    ("transfer_mnist",),
    ("encoding_detector_mnist",),
]


@pytest.mark.parametrize("run_args", FAMILIES, ids=["-".join(f) for f in FAMILIES])
def test_load_reproduces_results_json_and_earlier_steps(trained, run_args):
    name = run_args[0]
    if name == "transfer_mnist":  # test_main's run: from a pretrained encoder.
        run_args = (name, f"--config.init_from.workdir={trained('patchvae_mnist').workdir}")
    workdir = trained(*run_args).workdir
    results = json.loads((workdir / "results.json").read_text())
    run = evaluate.load(workdir)
    assert run.step == results["step"] == 4
    assert name.startswith(run.config.model.name + "_")
    # The same program on the same devices and batches as the trainer's evaluation: exactly.
    assert run.evaluate() == results["metrics"]
    earlier = evaluate.load(str(workdir), step=2)
    assert earlier.step == 2 and earlier.evaluate().keys() == results["metrics"].keys()
    # The pictures are those the trainer saved, byte for byte once tiled.
    grids = run.image_grids()
    for name_, grid in grids.items():
        saved = summaries.image_grid(grid)[0]
        from PIL import Image

        np.testing.assert_array_equal(
            np.asarray(Image.open(workdir / "images" / f"{name_}.png")).reshape(saved.shape), saved
        )
    rows = run.images(n=3)
    assert rows.keys() == grids.keys()
    assert all(r.dtype == np.uint8 and r.ndim == 4 for r in rows.values())


def test_predict_takes_any_number_of_images(trained):
    run = evaluate.load(trained("ssd_mnist").workdir)
    scenes = np.random.default_rng(0).random((3, 32, 32, 1)).astype(np.float32)
    detections = run.predict(scenes)
    assert set(detections) == {"boxes", "scores", "labels", "valid"}
    assert detections["boxes"].shape == (3, 10 * 25, 4)
    np.testing.assert_array_equal(run.predict(scenes[:1])["scores"], detections["scores"][:1])
    vae = evaluate.load(trained("vae_mnist").workdir).predict(np.zeros((5, 28, 28, 1)))
    assert vae["reconstruction"].shape == (5, 28, 28, 1) and vae["mean"].shape == (5, 4)
    with pytest.raises(UserError, match=r"images \[N, H, W, C\]"):
        evaluate.load(trained("vae_mnist").workdir).predict(np.zeros((28, 28)))


def test_data_overrides_evaluate_other_splits_and_batch_sizes(trained):
    workdir = trained("vae_mnist").workdir
    run = evaluate.load(workdir, overrides={"eval_batch_size": "24"})
    assert run.config.eval_batch_size == 24
    on_train = run.evaluate(split="train[:40]")
    assert set(on_train) == {
        "test/nelbo_nats",
        "test/recon_nats",
        "test/kl_nats",
        "test/nll_is_nats",
    }
    # eval_batch_size 12 is not a multiple of 8 devices: rounded up, padding rows masked.
    assert evaluate.load(workdir, overrides={"eval_batch_size": 12}).config.eval_batch_size == 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"step": 3}, "has no checkpoint at step 3; its steps: 2, 4"),
        ({"overrides": {"model.latent_dim": 3}}, "model.latent_dim cannot change"),
        ({"overrides": {"no_such_key": 1}}, "unknown config key 'no_such_key'"),
        ({"overrides": {"eval_batch_size": "many"}}, "bad value 'many'"),
    ],
)
def test_bad_requests_are_user_errors(trained, kwargs, message):
    with pytest.raises(UserError, match=message):
        evaluate.load(trained("vae_mnist").workdir, **kwargs)


def test_no_checkpoint_and_unknown_model(tmp_path, trained):
    with pytest.raises(UserError, match="holds no checkpoints"):
        evaluate.load(tmp_path)
    # A checkpoint whose config names a model this version does not know.
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(trained("vae_mnist").workdir, workdir)
    for meta in (workdir / "checkpoints").glob("*/meta/*"):
        if meta.is_file() and '"model"' in meta.read_text():
            meta.write_text(meta.read_text().replace('"name": "vae"', '"name": "vqvae"'))
    for step_dir in (workdir / "checkpoints").iterdir():  # Intact, as such a version wrote it.
        checksums.seal(files.path(step_dir))
    with pytest.raises(UserError, match="unknown model.name 'vqvae'"):
        evaluate.load(workdir)


def run_cli(*args):
    return run_module("jvision.evaluate", *args)


def test_cli_prints_results_json_and_writes_the_pictures(trained, tmp_path):
    workdir = trained("ssd_mnist").workdir
    result = run_cli(f"--workdir={workdir}", f"--images={tmp_path / 'pictures'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == json.loads((workdir / "results.json").read_text())
    written = (tmp_path / "pictures" / "detections.png").read_bytes()
    assert written == (workdir / "images" / "detections.png").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--workdir is required"),
        (["--workdir={missing}"], "holds no checkpoints"),
        (["--workdir={workdir}", "--step=7"], "no checkpoint at step 7"),
        (["--workdir={workdir}", "--split=validation"], "has no split 'validation'"),
        (["--workdir={workdir}", "--config.model.latent_dim=2"], "cannot change at evaluation"),
        (["--workdir={workdir}", "--config.nope=2"], "unknown config key 'nope'"),
        (["--workdir={workdir}", "--config.seed"], "write config overrides as --config.KEY=VALUE"),
        (["--workdir={workdir}", "--frobnicate"], "Unknown command line flag 'frobnicate'"),
        # Checked before the model is read: the missing workdir is never reached.
        (["--workdir={missing}", "--images={file}"], "--images {file} is a file, not a"),
        (["--workdir={missing}", "--images={file}/pictures"], "lies under {file}, which is a file"),
    ],
)
def test_cli_bad_input_is_one_line(trained, tmp_path, args, message):
    workdir = trained("vae_mnist").workdir
    file = tmp_path / "a_file"
    file.write_text("not a directory")
    names = dict(workdir=workdir, missing=tmp_path / "missing", file=file)
    result = run_cli(*(a.format(**names) for a in args))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("jvision: error:")]
    assert len(lines) == 1 and message.format(**names) in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_the_public_scorer_gives_the_evaluators_numbers(trained):
    """Outside data scored with `score_detections` (padded predictions as `predict` returns
    them, padded ground truth) equal the evaluator's mAP and APs on the same scenes."""
    run = evaluate.load(trained("ssd_mnist").workdir)
    scenes = run.examples(n=40)  # The evaluation split of the tiny config: test[:40].
    # Predicted in the evaluation's batches (16, the last one padded): a convolution's float32
    # rounding may depend on how many images each device holds (it does on AMD EPYC with AVX2),
    # and the ranking of near-equal scores, hence the APs, on that rounding.
    size = run.config.eval_batch_size
    padded = np.concatenate([scenes["image"], np.zeros_like(scenes["image"][: -40 % size])])
    chunks = [run.predict(padded[i : i + size]) for i in range(0, len(padded), size)]
    predicted = {k: np.concatenate([c[k] for c in chunks])[:40] for k in chunks[0]}
    scores = evaluate.score_detections(predicted, scenes)
    metrics = run.evaluate()
    assert scores == {k.split("/")[1]: v for k, v in metrics.items()}


def test_the_scorer_refuses_pixels_and_warns_of_transposed_boxes(caplog):
    truth = {"boxes": np.array([[[0.1, 0.3, 0.9, 0.5]]]), "labels": np.array([[7]])}
    detections = {
        "boxes": np.array([[[0.3, 0.1, 0.5, 0.9]]]),  # The same box, x and y swapped.
        "scores": np.array([[0.9]]),
        "labels": np.array([[7]]),
        "valid": np.array([[True]]),
    }
    assert evaluate.score_detections(detections, truth)["mAP"] == 0.0
    assert "different box conventions" in caplog.text
    with pytest.raises(ValueError, match="boxes are fractions of the image"):
        evaluate.score_detections(detections, {**truth, "boxes": truth["boxes"] * 32})
    pixels = {**detections, "boxes": detections["boxes"] * 32}
    with pytest.raises(ValueError, match="predictions boxes span"):
        evaluate.score_detections(pixels, truth)


def test_the_trainer_scores_its_own_boxes_wherever_they_lie():
    """An untrained detector's boxes may lie far outside the image (decoded offsets are not
    clipped): the trainer's evaluation scores them as misses instead of refusing them."""
    from jvision.ops import detection_metrics

    truth = {"boxes": np.array([[[0.1, 0.3, 0.9, 0.5]]]), "labels": np.array([[7]])}
    wild = {
        "boxes": np.array([[[-1.2, -0.5, 1.7, 0.4], [0.1, 0.3, 0.9, 0.5]]]),
        "scores": np.array([[0.9, 0.8]]),
        "labels": np.array([[7, 7]]),
        "valid": np.array([[True, True]]),
    }
    scores = detection_metrics.score(wild, truth, check_convention=False)
    # The wild box ranks first and misses; the exact one is found: precision 1/2 at recall 1.
    assert scores["AP_7"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="predictions boxes span"):
        detection_metrics.score(wild, truth)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.full((2, 28, 28, 1), 255, np.uint8), "float images in \\[0, 1\\]; got uint8"),
        (np.full((2, 28, 28, 1), 255.0), "span \\[255, 255\\] \\(divide 0-255 pixels by 255\\)"),
        (np.zeros((28, 28, 1)), "takes images \\[N, H, W, C\\]"),
        (np.zeros((2, 20, 20, 1)), "cannot take images of shape \\[20, 20, 1\\] .*\\[28, 28, 1\\]"),
        (np.full((1, 28, 28, 1), np.nan), "finite"),
    ],
    ids=["uint8", "0-255", "no batch axis", "another size", "nan"],
)
def test_predict_refuses_images_it_cannot_take(trained, images, message):
    run = evaluate.load(trained("vae_mnist").workdir)
    with pytest.raises(UserError, match=message):
        run.predict(images)
