"""`jvision.convert`: weights in from PyTorch and back out, for every family with a PyTorch twin
(tiny configs).

Per family: jvision -> torch state_dict -> jvision gives back every variable bit for bit; and a
state_dict made by the twin itself (torch's initialisation, with biases, normalisation scales and
statistics and the exemplar bank moved off their initial values) converted by the command line
gives a folder that `evaluate.load` opens, whose model computes in float64 what the twin computes
in float64 from the same images: `predict`'s outputs, except where `predict` post-processes
(below). The SSD tutorial's own module's state_dict (its names, its separate box and class
convs, in its checkpoint dict or bare) converts to the same weights, its separate convs compute the
twin's outputs, and it goes back bit for bit; the converted model's priors are the tutorial's
(its transposed frame, from its formula), with which jvision decodes a prior's offsets to the box
the tutorial's decode gives. Bad input is one line.
"""

import os
import re
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flax import nnx  # noqa: E402
from helpers import (  # noqa: E402
    LOSS_RTOL,
    float64,
    load_config,
    model_to_float64,
    run_module,
    twins,
)

from jvision import config_overrides, convert, evaluate, models, zoo  # noqa: E402
from jvision.errors import UserError  # noqa: E402
from jvision.models import ssd  # noqa: E402
from jvision.ops import boxes as box_ops  # noqa: E402

# Both sides compute in float64 from the same float32 weights: they differ only in the order of
# their sums, ≲ 1e-11 of the summed magnitudes (the derivation beside `helpers.LOSS_RTOL`). Each
# output is compared relative to its largest magnitude, at LOSS_RTOL, three orders above that.
RTOL = LOSS_RTOL
IMAGES = 3
SCENE_SHAPE = (32, 32, 1)  # The MNIST detection scenes (configs without model.image_shape).

CASES = {
    "vae": ("vae_mnist", {}),
    "draw": ("draw_mnist", {}),
    "ssd": ("ssd_mnist", {}),
    "patchvae": ("patchvae_mnist", {}),
    "patchvae-vae": ("patchvae_mnist", {"model.kind": "vae"}),
    "transfer": ("transfer_mnist", {}),
    "encoding_detector": ("encoding_detector_mnist", {}),
}


def _config(case: str):
    name, overrides = CASES[case]
    config = load_config(name, "tiny")
    config_overrides.apply_overrides(config, overrides)
    return (
        config,
        f"--config=configs/{name}.py:tiny",
        [f"--config.{k}={v}" for k, v in overrides.items()],
    )


def _nhwc(x):
    return x.permute(0, 2, 3, 1)


# What each side computes from images [B, H, W, C] (float64): predict's outputs, in jvision's
# layouts. Where predict post-processes, the network outputs it is computed from: the SSD's box
# offsets and class logits (predict adds decoding and non-maximum suppression), DRAW's final
# canvas (predict also records every glimpse's canvas and windows, which the twin does not).


def _jvision_outputs(config, model, images) -> dict:
    family = models.get(config.model)
    if config.model.name == "ssd":
        offsets, logits = nnx.jit(lambda m, x: m(x))(model, images)
        return {"offsets": offsets, "logits": logits}
    outputs = nnx.jit(lambda m, x: family.predict(m, {"image": x}, 0))(model, images)
    if config.model.name == "draw":
        return {"canvas": outputs["canvases"][:, -1]}
    if config.model.name == "encoding_detector":
        return {"heat": outputs["heat"]}
    if config.model.name == "transfer":
        return {"logits": outputs["logits"]}
    return dict(outputs)


def _twin_outputs(config, twin, images) -> dict:
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    m = config.model
    if m.name == "vae":
        mean, logvar = twin.encode(x)
        reconstruction = _nhwc(torch.sigmoid(twin.decode(mean)))
        return {"reconstruction": reconstruction, "mean": mean, "logvar": logvar}
    if m.name == "draw":
        noise = x.new_zeros(m.num_glimpses, len(x), m.latent_size)  # predict: z_t = its mean.
        return {"canvas": _nhwc(torch.sigmoid(twin(x, noise)[0]))}
    if m.name == "ssd":
        offsets, logits = twin(x)
        return {"offsets": offsets, "logits": logits}
    if m.name == "patchvae" and m.kind == "patchvae":
        mean, _, logits = twin.posterior((x - 0.5) / 0.5)
        reconstruction = twin.decode(mean, (logits > 0).to(mean))
        return {
            "appearance": mean,
            "occurrence": _nhwc(torch.sigmoid(logits)),
            "reconstruction": (_nhwc(reconstruction) + 1) / 2,
        }
    if m.name == "patchvae":
        mean, _ = twin.posterior((x - 0.5) / 0.5)
        return {"latent": mean, "reconstruction": (_nhwc(twin.decode(mean)) + 1) / 2}
    if m.name == "transfer":
        return {"logits": twin(x)}
    return {"heat": _nhwc(torch.sigmoid(twin.heat_logits(x)))}


def _perturb_twin(twin, seed: int = 1) -> None:
    """Moves biases, normalisation scales and statistics off torch's initial 0s and 1s and fills
    the exemplar bank, so that the conversion of each is tested."""
    generator = torch.Generator().manual_seed(seed)

    def normal(t, scale):
        return scale * torch.randn(t.shape, generator=generator, dtype=t.dtype)

    def uniform(t):
        return 0.7 + 0.6 * torch.rand(t.shape, generator=generator, dtype=t.dtype)

    with torch.no_grad():
        for name, parameter in twin.named_parameters():
            if name.endswith("bias"):
                parameter.add_(normal(parameter, 0.05))
        for module in twin.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # GroupNorm2d included.
                module.weight.mul_(uniform(module.weight))
                if module.running_var is not None:
                    module.running_mean.add_(normal(module.running_mean, 0.05))
                    module.running_var.mul_(uniform(module.running_var))
        if hasattr(twin, "bank"):
            twin.bank.copy_(normal(twin.bank, 1.0))
            twin.bank_counts.copy_(torch.arange(len(twin.bank_counts), dtype=torch.float32))


def _assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want), set(got) ^ set(want)
    for name, value in want.items():
        value = value.detach().numpy()
        assert value.dtype == np.float64, name
        difference = np.abs(np.asarray(got[name]) - value).max()
        assert difference <= RTOL * np.abs(value).max(), (name, difference)


def _read_params(folder) -> dict:
    with np.load(os.path.join(folder, zoo.PARAMS_FILE)) as arrays:
        return {name: arrays[name] for name in arrays.files}


@pytest.mark.parametrize("case", list(CASES))
def test_weights_convert_both_ways(case, tmp_path):
    """jvision -> torch -> jvision is bit-exact; the twin's own weights, converted by the command
    line, compute the twin's outputs (see the module doc)."""
    config, config_flag, overrides = _config(case)

    # jvision -> torch -> jvision: every variable, bit for bit (random values: every element
    # distinct, so that any misplaced one shows).
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda leaf: rng.standard_normal(leaf.shape).astype(leaf.dtype), convert.template(config)
    )
    back = convert.from_torch(convert.to_torch(variables, config), config)
    original, again = zoo.flatten(variables), zoo.flatten(back)
    assert original.keys() == again.keys()
    for name, value in original.items():
        assert again[name].dtype == value.dtype, name
        np.testing.assert_array_equal(again[name], value, err_msg=name)

    # The twin's own state_dict, through the command line, computes what the twin computes.
    twin = twins().build(config)
    _perturb_twin(twin)
    twin.eval()
    torch.save(twin.state_dict(), tmp_path / "twin.pt")
    folder = tmp_path / "converted"
    result = run_module(
        "jvision.convert",
        f"--from-torch={tmp_path / 'twin.pt'}",
        config_flag,
        *overrides,
        f"--out={folder}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert zoo.card(folder)["what"] == "converted from a PyTorch state_dict"
    run = evaluate.load(folder)
    shape = tuple(config.model.get("image_shape") or SCENE_SHAPE)
    images = rng.uniform(size=(IMAGES, *shape))
    with float64():
        model_to_float64(run.model)
        got = _jvision_outputs(config, run.model, jnp.asarray(images))
    with torch.no_grad():
        want = _twin_outputs(config, twin.double(), images)
    _assert_close(got, want)


# --- The SSD tutorial's own module (PhanHuyThong's main.ipynb, `SSD300`) ------------------------

TUTORIAL_SCALES = np.linspace(0.1, 0.9, 4)  # The tutorial's fm_prior_scale.
VARIANCES = (0.1, 0.2)  # The tutorial's decode: centre + offset·0.1·size, size·exp(offset·0.2).


def _tutorial_state_dict(fused: dict, model) -> dict:
    """The twin's state_dict `fused` renamed as the tutorial's module names its tensors, written
    from that module's structure: `base_conv.module_list` holds per stage s (Conv wrapper,
    BatchNorm2d, activation) twice and a max-pool, modules 7s..7s+6; `aux_conv.module_list` the
    same without the pool, 6s..6s+5; a Conv wrapper's nn.Conv2d is its `.conv`. Head i is
    `pred_conv.loc_module_list.{i}` and `pred_conv.cla_module_list.{i}`, each (InstanceNorm2d,
    Conv2d): the conv is `.1`, the fused conv's first priors·4 channels and the rest. No priors."""
    norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    out = {}
    for part, per_stage, widths in (("base", 7, model.base_widths), ("aux", 6, model.aux_widths)):
        for stage in range(len(widths) - 1):
            for layer, conv_index in ((0, per_stage * stage), (1, per_stage * stage + 3)):
                twin, tutorial = f"network.{part}.{stage}.{layer}", f"{part}_conv.module_list"
                for tensor in ("weight", "bias"):
                    out[f"{tutorial}.{conv_index}.conv.{tensor}"] = fused[f"{twin}.conv.{tensor}"]
                for tensor in norm:
                    out[f"{tutorial}.{conv_index + 1}.{tensor}"] = fused[f"{twin}.norm.{tensor}"]
    boxes, classes = {}, {}
    for head, ratios in enumerate(model.aspect_ratios):
        offsets = 4 * (len(ratios) + 1)
        for tensor in ("weight", "bias"):
            value = fused[f"network.heads.{head}.conv.{tensor}"]
            boxes[f"pred_conv.loc_module_list.{head}.1.{tensor}"] = value[:offsets]
            classes[f"pred_conv.cla_module_list.{head}.1.{tensor}"] = value[offsets:]
    return {**out, **boxes, **classes}


def _tutorial_priors(model, scales) -> np.ndarray:
    """The tutorial's `create_prior_boxes`, in its own layout: for map i (d×d, scale s), row j,
    column k, ratio r: (cx, cy, w, h) = ((k+.5)/d, (j+.5)/d, s·√r, s/√r), and after r = 1 an
    extra square prior of size √(s·s_next), 1 on the last map; float32, clamped to [0, 1]."""
    priors = []
    for i, (d, ratios) in enumerate(zip(model.feature_sizes, model.aspect_ratios, strict=True)):
        s = scales[i]
        extra = np.sqrt(s * scales[i + 1]) if i + 1 < len(scales) else 1.0
        for j in range(d):
            for k in range(d):
                for r in ratios:
                    priors.append([(k + 0.5) / d, (j + 0.5) / d, s * np.sqrt(r), s / np.sqrt(r)])
                    if r == 1:
                        priors.append([(k + 0.5) / d, (j + 0.5) / d, extra, extra])
    return np.clip(np.asarray(priors, np.float32), 0, 1)


def _tutorial_decode(offsets, priors):
    """The tutorial's decode in float64: centre-size from its priors' layout, then corners, the
    first coordinate of each pair compared with its boxes' first: a row."""
    priors = priors.astype(np.float64)
    centres = priors[:, :2] + offsets[:, :2] * VARIANCES[0] * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(offsets[:, 2:] * VARIANCES[1])
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], 1)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """A tutorial-named state_dict (of the twin's perturbed weights), saved as the tutorial saves
    its checkpoint (`model_state_dict` beside the optimizer's, the scheduler's, its config with a
    NumPy array and its loss curve) and converted by the command line."""
    config, config_flag, _ = _config("ssd")
    twin = twins().build(config)
    _perturb_twin(twin)
    twin.eval()
    fused = twin.state_dict()
    state = _tutorial_state_dict(fused, config.model)
    folder = tmp_path_factory.mktemp("tutorial")
    optimizer = torch.optim.Adam(twin.parameters())
    checkpoint = {
        "model_state_dict": state,
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": torch.optim.lr_scheduler.MultiStepLR(optimizer, [20]).state_dict(),
        "config": {"device": "cpu", "fm_prior_scale": TUTORIAL_SCALES, "n_classes": 11},
        "plot_loss": [1.5, 0.7],
    }
    torch.save(checkpoint, folder / "checkpoint.pth")
    result = run_module(
        "jvision.convert",
        f"--from-torch={folder / 'checkpoint.pth'}",
        "--layout=tutorial",
        config_flag,
        f"--out={folder / 'converted'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return types.SimpleNamespace(
        config=config, twin=twin, fused=fused, state=state, folder=folder / "converted"
    )


def test_the_ssd_tutorials_names_convert_to_the_twins_variables(tutorial, tmp_path):
    """The tutorial's module's state_dict (in a checkpoint dict, or bare) converts to the
    variables the twin's converts to, bit for bit, except the priors; its separate convs compute
    the twin's outputs; `--to-torch --layout=tutorial` gives back the state_dict bit for bit."""
    config, config_flag, _ = _config("ssd")
    torch.save(tutorial.state, tmp_path / "bare.pt")
    result = run_module(
        "jvision.convert",
        f"--from-torch={tmp_path / 'bare.pt'}",
        "--layout=tutorial",
        config_flag,
        f"--out={tmp_path / 'bare'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = zoo.flatten(convert.from_torch(tutorial.fused, config, "twin"))
    for folder in (tutorial.folder, tmp_path / "bare"):
        got = _read_params(folder)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            if name != "priors":
                np.testing.assert_array_equal(got[name], value, err_msg=name)
    with pytest.raises(UserError, match="--layout=tutorial"):  # Without it: named, with a hint.
        convert.from_torch(tutorial.state, config)

    back_file = tmp_path / "back.pt"
    result = run_module(
        "jvision.convert",
        "--to-torch",
        f"--workdir={tutorial.folder}",
        "--layout=tutorial",
        f"--out={back_file}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    back = torch.load(back_file, weights_only=True)
    assert list(back) == list(tutorial.state)  # The tutorial's module's order, no priors.
    for name, value in tutorial.state.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name

    # The tutorial's prediction convs: per map InstanceNorm2d then each conv, outputs NCHW ->
    # NHWC viewed as [B, H·W·priors, 4 | 11], concatenated over the maps.
    twin = tutorial.twin.double()
    images = torch.from_numpy(np.random.default_rng(0).uniform(size=(IMAGES, 1, 32, 32)))
    separate = {"loc": [], "cla": []}
    with torch.no_grad():
        offsets, logits = twin(images)
        for index, x in enumerate(twin.network.feature_maps(images)):
            for kind, width in (("loc", 4), ("cla", 11)):
                weight, bias = (
                    tutorial.state[f"pred_conv.{kind}_module_list.{index}.1.{tensor}"].double()
                    for tensor in ("weight", "bias")
                )
                out = F.conv2d(F.instance_norm(x, eps=1e-5), weight, bias, padding=1)
                separate[kind].append(out.permute(0, 2, 3, 1).reshape(len(x), -1, width))
    twin.float()
    _assert_close(
        {"offsets": torch.cat(separate["loc"], 1), "logits": torch.cat(separate["cla"], 1)},
        {"offsets": offsets, "logits": logits},
    )


def test_the_ssd_tutorials_priors_are_its_transposed_frame(tutorial):
    """The converted model's priors are the tutorial's, read in jvision's (cy, cx, h, w); with
    them jvision's decoding puts a prior's box where the tutorial's decode puts it."""
    model = tutorial.config.model
    # The tutorial's encode and decode pair its priors' (cx, cy, w, h) with its boxes' (row_min,
    # col_min, row_max, col_max): its "cx" is a row centre, its "w" a height. So in jvision's
    # (cy, cx, h, w) its priors are its array as it is.
    want = _tutorial_priors(model, model.prior_scales)
    run = evaluate.load(tutorial.folder)
    priors = np.asarray(run.model.priors[...])
    np.testing.assert_array_equal(priors, want)
    # The tutorial's own scales (the config's are rounded to 8 digits): within a float32 step.
    np.testing.assert_allclose(priors, _tutorial_priors(model, TUTORIAL_SCALES), rtol=0, atol=1e-7)
    # That is jvision's priors with each prior's row and column centres swapped, except the
    # extents of the last map's extra priors (one per cell, after ratio 1): the tutorial's are 1,
    # jvision's √(s·1).
    ratios = tuple(map(tuple, model.aspect_ratios))
    own = box_ops.ssd_priors(tuple(model.feature_sizes), tuple(model.prior_scales), ratios)
    d, n = model.feature_sizes[-1], len(ratios[-1]) + 1
    last_extras = len(own) - d * d * n + n * np.arange(d * d) + ratios[-1].index(1.0) + 1
    differ = np.flatnonzero((own[:, [1, 0, 2, 3]] != priors).any(1))
    np.testing.assert_array_equal(differ, last_extras)
    np.testing.assert_array_equal(priors[differ, 2:], 1.0)

    # One prior by hand: map 1 (8×8), feature cell row 1, column 5, its fourth prior (ratio 4).
    first_of_map = model.feature_sizes[0] ** 2 * (len(ratios[0]) + 1)
    index = first_of_map + (1 * model.feature_sizes[1] + 5) * (len(ratios[1]) + 1) + 3
    offsets = np.zeros((len(priors), 4))
    offsets[index] = (0.6, -1.1, -0.9, 0.4)
    logits = np.zeros((len(priors), 11))
    logits[:, 10] = 12.0  # Background everywhere,
    logits[index] = np.eye(11)[7] * 12.0  # but a 7 at that prior.
    box = _tutorial_decode(offsets[index : index + 1], want[index : index + 1])
    with float64():
        priors64 = jnp.asarray(priors, jnp.float64)
        detected = ssd.detect(jnp.asarray(offsets), jnp.asarray(logits), priors64, 0.2, 0.45, 1)
    boxes, labels, valid = (np.asarray(detected[k]) for k in ("boxes", "labels", "valid"))
    assert valid.sum() == 1 and labels[valid][0] == 7
    np.testing.assert_allclose(boxes[valid], box, rtol=1e-12)
    # The tutorial's cell (row 1, column 5) detects at image row ≈ 5.5/8, column ≈ 1.5/8.
    centre = (box[0, :2] + box[0, 2:]) / 2
    assert abs(centre[0] - 5.5 / 8) < 0.1 and abs(centre[1] - 1.5 / 8) < 0.1, centre


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    """A missing file, a state_dict of another model, an --out in use or in the zoo, a layout
    for another family, a model trained by jvision written in the SSD tutorial's layout: one
    line, exit 1, no file; a differing shape is named."""
    vae_flag = "--config=configs/vae_mnist.py:tiny"
    torch.save(twins().build(load_config("vae_mnist", "tiny")).state_dict(), tmp_path / "vae.pt")
    source = f"--from-torch={tmp_path / 'vae.pt'}"
    full = tmp_path / "full"
    full.mkdir()
    (full / "file").write_text("")
    out = f"--out={tmp_path / 'out'}"
    cases = [
        ([f"--from-torch={tmp_path / 'missing.pt'}", vae_flag, out], "missing.pt: no such file"),
        (
            [source, "--config=configs/ssd_mnist.py:tiny", out],
            "does not fit the config's PyTorch twin: it lacks priors, "
            "network.base.0.0.conv.weight, network.base.0.0.conv.bias and ",
        ),
        ([source, vae_flag, f"--out={full}"], "exists and is not empty"),
        (
            [source, vae_flag, f"--out={zoo.ROOT / 'converted'}"],
            "in the model zoo, which is read-only",
        ),
        ([source, vae_flag, "--layout=tutorial", out], "--layout=tutorial is the SSD tutorial's"),
        (  # Trained by jvision with the tutorial's config: its priors are jvision's.
            ["--to-torch", "--workdir=zoo:ssd_mnist_short", "--layout=tutorial", out],
            "--layout=tutorial: the model's priors are jvision's (a model trained by jvision)",
        ),
    ]
    before = sorted(os.listdir(tmp_path))
    zoo_before = sorted(os.listdir(zoo.ROOT)) if zoo.ROOT.exists() else []
    for args, message in cases:
        result = run_module("jvision.convert", *args)
        errors = [line for line in result.stderr.splitlines() if line.startswith("jvision: error:")]
        assert result.returncode == 1 and len(errors) == 1, result.stderr[-2000:]
        assert message in errors[0], errors[0]
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(full) == ["file"]
    assert (sorted(os.listdir(zoo.ROOT)) if zoo.ROOT.exists() else []) == zoo_before

    config = load_config("vae_mnist", "tiny")
    config.model.latent_dim = 5
    shape = "posterior.weight has shape [8, 392]; the config's twin has [10, 392]"
    with pytest.raises(UserError, match=re.escape(shape)):
        convert.from_torch(torch.load(tmp_path / "vae.pt", weights_only=True), config)
