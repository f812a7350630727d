"""`jvision.convert`: weights in from PyTorch and back out, for every family with a PyTorch twin
(tiny configs).

Per family: jvision -> torch state_dict -> jvision gives back every variable bit for bit; and a
state_dict made by the twin itself (torch's initialisation, with biases, normalisation scales and
statistics and the exemplar bank moved off their initial values) converted by the command line
gives a folder that `evaluate.load` opens, whose model computes in float64 what the twin computes
in float64 from the same images: `predict`'s outputs, except where `predict` post-processes
(below). The SSD tutorial's layout (separate box and class convs) converts to the same model, and
the tutorial's separate convs compute the twin's outputs. Bad input is one line.
"""

import os
import re

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


def test_the_ssd_tutorials_separate_convs_convert_to_the_fused_one(tmp_path):
    """The tutorial's layout (each head's box and class convs apart, no `priors`: the tutorial
    computes them) gives the same variables as the twin's fused layout, bit for bit; its
    separate convs compute the twin's outputs; `--to-torch --layout=tutorial` writes it back."""
    config, config_flag, _ = _config("ssd")
    tm = twins()
    twin = tm.build(config)
    _perturb_twin(twin)
    twin.eval()
    fused = twin.state_dict()
    tutorial = {k: v for k, v in tm.ssd.to_tutorial(fused).items() if k != "priors"}
    assert "network.heads.3.class_conv.weight" in tutorial
    torch.save(tutorial, tmp_path / "tutorial.pt")
    folder = tmp_path / "converted"
    result = run_module(
        "jvision.convert",
        f"--from-torch={tmp_path / 'tutorial.pt'}",
        "--layout=tutorial",
        config_flag,
        f"--out={folder}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = zoo.flatten(convert.from_torch(fused, config))
    got = _read_params(folder)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    with pytest.raises(UserError, match="--layout=tutorial"):  # Without it: named, with a hint.
        convert.from_torch(tutorial, config)

    result = run_module(
        "jvision.convert",
        "--to-torch",
        f"--workdir={folder}",
        "--layout=tutorial",
        f"--out={tmp_path / 'back.pt'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    want = tm.ssd.to_tutorial(fused)  # With the priors: the config's, which the twin holds.
    assert list(back) == list(want)
    for name, value in want.items():
        assert torch.equal(back[name], value), name

    # The tutorial's prediction convs: per map InstanceNorm2d then each conv, outputs NCHW ->
    # NHWC reshaped to [B, H·W·priors, 4 | 11], concatenated over the maps.
    twin.double()
    images = torch.from_numpy(np.random.default_rng(0).uniform(size=(IMAGES, 1, 32, 32)))
    separate = {"box_conv": [], "class_conv": []}
    with torch.no_grad():
        offsets, logits = twin(images)
        for index, x in enumerate(twin.network.feature_maps(images)):
            for conv, width in (("box_conv", 4), ("class_conv", 11)):
                weight, bias = (
                    tutorial[f"network.heads.{index}.{conv}.{kind}"].double()
                    for kind in ("weight", "bias")
                )
                out = F.conv2d(F.instance_norm(x, eps=1e-5), weight, bias, padding=1)
                separate[conv].append(out.permute(0, 2, 3, 1).reshape(len(x), -1, width))
    _assert_close(
        {
            "offsets": torch.cat(separate["box_conv"], 1),
            "logits": torch.cat(separate["class_conv"], 1),
        },
        {"offsets": offsets, "logits": logits},
    )


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    """A missing file, a state_dict of another model, an --out in use or in the zoo, a layout
    for another family: one line, exit 1, no file; a differing shape is named."""
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
