"""The encoding detector: triplet geometry, response geometry, exemplar bank, peak decoding, e2e."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import built, float64, load_config, model_to_float64, to_float64

from jvision import models
from jvision.models import encoding_detector
from jvision.models.encoding_detector import triplets
from jvision.ops import coco_metrics, correlation
from jvision.safety import reader


def test_square_windows_are_centred_and_enlarged():
    top, left, side = triplets.square_window(np.array([10.0, 4.0, 20.0, 10.0]), 2.0)
    assert side == 20.0  # 2 × max(height 10, width 6).
    assert (top + side / 2, left + side / 2) == (15.0, 7.0)  # The box's centre.
    # In the window resized to 40 px (×2), the box is centred (at 20, 20) and twice its size.
    window_box = triplets.to_window(np.array([[10.0, 4.0, 20.0, 10.0]]), top, left, side, 40)
    np.testing.assert_allclose(window_box, [[10.0, 14.0, 30.0, 26.0]])


def test_crops_keep_the_aspect_ratio_and_pad_outside_the_image_with_zeros():
    image = np.zeros((8, 8, 1), np.uint8)
    image[2:4, :, 0] = 200  # A horizontal bar, rows 2-3.
    out = triplets.crop(image, -4.0, 0.0, 8.0, 16)  # Half the window lies above the image.
    assert out.shape == (16, 16, 1)
    assert out[:8].max() == 0  # The part above the image is zeros.
    bar = out[:, :, 0] > 100
    # Rows 2-3 of 8 -> rows 12-15 of 16 (×2, shifted by the 4 rows above), across the whole
    # width: both axes scaled alike.
    assert bar[12:16].all() and not bar[:11].any()


def test_cell_labels_mark_window_centres_inside_boxes():
    centres = np.array([0.0, 2.0, 4.0, 6.0])
    labels = triplets.cell_labels(np.array([[1.0, 3.0, 4.0, 6.5]]), centres)
    expected = np.zeros((4, 4))
    expected[1:3, 2:4] = 1  # Rows with centres 2, 4; columns with centres 4, 6.
    np.testing.assert_array_equal(labels, expected)


def test_response_geometry_matches_an_impulse_through_a_real_conv_stack():
    strides = (2, 1, 2)
    jump, field = correlation.stack_geometry(strides)
    x = jnp.zeros((1, 40, 40, 1)).at[0, 17, 17, 0].set(1.0)
    for stride in strides:  # All-ones 3×3 kernels: a cell is non-zero iff it sees the impulse.
        x = jax.lax.conv_general_dilated(
            x,
            jnp.ones((3, 3, 1, 1)),
            (stride, stride),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    seen = np.flatnonzero(np.asarray(x[0, :, 17 // jump, 0]) > 0)
    # Cell u sees pixels [jump·u, jump·u + field): the cells that see pixel 17.
    expected = [u for u in range(x.shape[1]) if jump * u <= 17 < jump * u + field]
    assert list(seen) == expected
    assert correlation.feature_size(40, strides) == x.shape[1]
    # pytlib's sizes: 127 and 255 px give 12² and 28² maps, 17² responses centred 61..189.
    centres = correlation.response_centres(255, 127, (2, 1, 2, 2, 1))
    assert correlation.feature_size(127, (2, 1, 2, 2, 1)) == 12
    assert len(centres) == 17 and centres[0] == 61 and centres[-1] == 189


def _scenes():
    """Three 32×32 scenes: digits drawn as filled boxes, with labels."""
    scenes = []
    for boxes, labels in (
        ([[2, 2, 14, 10], [18, 20, 30, 28]], [3, 7]),
        ([[4, 16, 16, 26]], [3]),
        ([[10, 4, 24, 14], [2, 20, 12, 30]], [7, 1]),
    ):
        image = np.zeros((32, 32, 1), np.uint8)
        for y0, x0, y1, x1 in boxes:
            image[y0:y1, x0:x1] = 255
        padded_boxes = np.zeros((4, 4), np.float32)
        padded_boxes[: len(boxes)] = np.array(boxes) / 32
        padded_labels = np.full((4,), -1)
        padded_labels[: len(labels)] = labels
        scenes.append({"image": image, "boxes": padded_boxes, "labels": padded_labels})
    return scenes


def _settings():
    settings = load_config("encoding_detector_mnist", None).model
    return settings


def test_triplets_are_deterministic_and_well_formed():
    source = _scenes()
    make = triplets.Triplets(source, _settings())
    first = make(0, np.random.default_rng(5))
    again = make(0, np.random.default_rng(5))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert first["search_positive"].shape == first["search_negative"].shape == (46, 46, 1)
    assert first["exemplar"].shape == (23, 23, 1) and first["target_positive"].shape == (12, 12)
    kind = int(first["label"])
    assert kind in (3, 7)
    # The chosen object sits in the middle of the positive crop: its centre cells are positive.
    assert first["target_positive"][5:7, 5:7].all()
    # The exemplar of a 3 comes from the other scene with a 3 (never the same scene).
    if kind == 3:
        np.testing.assert_array_equal(
            first["exemplar"], triplets.crop(source[1]["image"], 4, 15, 12, 23)
        )


def test_negatives_never_touch_the_exemplars_class():
    source = _scenes()
    make = triplets.Triplets(source, _settings())
    boxes_of_7 = [np.array([18, 20, 30, 28.0]), np.array([10, 4, 24, 14.0])]
    for seed in range(30):
        rng = np.random.default_rng(seed)
        side = 24.0
        negative = make._negative(7, side, rng)
        assert negative.shape == (46, 46, 1)
    # The test used by _negative itself, on hand cases.
    assert triplets._intersects(np.stack(boxes_of_7), 0.0, 0.0, 12.0)  # Overlaps [10,4,24,14].
    assert not triplets._intersects(np.stack(boxes_of_7), 0.0, 16.0, 10.0)


def _model_config(**overrides):
    config = load_config("encoding_detector_mnist", "tiny").model
    config = ml_collections.ConfigDict(config.to_dict())
    config.update(overrides)
    return config


def _model(**overrides):
    return built(encoding_detector.build, _model_config(**overrides))


def test_exemplar_bank_is_the_mean_exemplar_map_per_class():
    """The bank against each crop encoded alone and averaged in NumPy, in float64: each map is
    the same sums (≤ 3·3·8 products per output, four layers, a GroupNorm) in possibly other
    orders, ≈ 1e-15 relative; ATOL = 1e-10 of the largest feature. A crop counted twice, or a
    padding slot counted, moves a class's mean by ≥ 1e-2 of it."""
    model = _model()
    model.eval()
    source = _scenes()
    make = triplets.Exemplars(source, _settings())
    examples = [make(i, None) for i in range(3)]
    family = models.get(_model_config())
    with float64():
        model_to_float64(model)
        batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}
        batch["exemplars"] = batch["exemplars"].astype(jnp.float64) / 255
        statistics = nnx.jit(family.calibration.statistics)(model, batch, 0)
        totals = jax.tree.map(lambda v: v.sum(axis=0), statistics)
        family.calibration.apply(model, totals)
        # By hand: encode every real crop alone, average per class.
        maps, encode = {}, nnx.jit(lambda m, x: m.encoder(x))
        for example in examples:
            for crop, label in zip(example["exemplars"], example["exemplar_labels"], strict=True):
                if label >= 0:
                    feature = encode(model, jnp.asarray(crop[None], jnp.float64) / 255)[0]
                    maps.setdefault(int(label), []).append(np.asarray(feature))
        bank = np.asarray(model.bank[...])
    assert bank.dtype == np.float64
    scale = max(np.abs(f).max() for features in maps.values() for f in features)
    for label, features in maps.items():
        np.testing.assert_allclose(bank[label], np.mean(features, 0), rtol=0, atol=1e-10 * scale)
    assert sorted(maps) == [1, 3, 7] and float(model.bank_counts[...][3]) == 2
    np.testing.assert_array_equal(model.bank[...][0], 0)  # No 0 in these scenes.


def test_peaks_decode_to_the_region_they_stand_on():
    heat = np.zeros((16, 16, 2), np.float32)
    heat[3:7, 2:5, 0] = 0.9  # Class 0: cells rows 3-6, columns 2-4 ...
    heat[4, 3, 0] = 0.95  # ... peaking inside.
    heat[10:14, 10:12, 1] = 0.3  # Class 1: too weak for a 0.4 threshold.
    decode = jax.jit(encoding_detector.decode, static_argnums=(1, 2, 3))
    settings = (0.4, 0.5, 0.45, 2)
    out = jax.device_get(decode(jnp.asarray(heat), 2, (32, 32), settings))
    valid = out["valid"]
    assert valid.sum() == 1 and out["labels"][valid][0] == 0
    assert out["scores"][valid][0] == pytest.approx(0.95)
    # Cells 3..6 have centres 6..12 px: the box spans one cell beyond: 5..13 px (rows), 3..9 px.
    np.testing.assert_allclose(out["boxes"][valid][0] * 32, [5.0, 3.0, 13.0, 9.0])
    settings = (0.2, 0.5, 0.45, 2)
    out = jax.device_get(decode(jnp.asarray(heat), 2, (32, 32), settings))
    assert sorted(out["labels"][out["valid"]]) == [0, 1]  # Now class 1 clears the threshold.


def test_both_correlations_give_the_same_training_loss():
    source = _scenes()
    make = triplets.Triplets(source, _settings())
    examples = [make(i % 3, np.random.default_rng(i)) for i in range(4)]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    for key in ("search_positive", "search_negative", "exemplar"):
        batch[key] = batch[key].astype(np.float32) / 255
    key = jax.random.key(0)
    terms = {}
    with float64():  # Model and batch in float64, so that the bound is float64's.
        batch = to_float64(batch)
        for method in ("direct", "fft"):
            model = _model(correlation=method)
            model_to_float64(model)
            train_loss = models.get(_model_config(correlation=method)).train_loss
            loss, values = nnx.jit(train_loss)(model, batch, key, 0)
            terms[method] = {name: np.asarray(value) for name, value in values.items()}
            terms[method]["loss"] = np.asarray(loss)
    direct, fft = terms["direct"], terms["fft"]
    expected = {"loss", "bce_positive", "bce_negative", "vae_recon", "vae_kl"}
    assert set(fft) == set(direct) == expected
    # The correlation sums differ by the FFT's rounding, ≈ 3·log₂(16·16)·u·Σ_c‖x_c‖‖k_c‖ ≈ 2e-12
    # for these 16×16 search and 5×5 exemplar maps of 8 channels (Σ_c‖x_c‖‖k_c‖ ≈ 640 here;
    # u = 2⁻⁵³); the logits are 1/200 of the sums and each cross-entropy is 1-Lipschitz in its
    # logit: the BCE means, ~0.7, differ by ≤ 1e-14. RTOL = 1e-12; a flipped exemplar changes
    # them by ≥ 7e-3, a response map shifted by one cell the positive one by 7e-3.
    for name in ("bce_positive", "bce_negative"):
        assert fft[name].dtype == np.float64, (name, fft[name].dtype)
        np.testing.assert_allclose(fft[name], direct[name], rtol=1e-12, err_msg=name)
    # The VAE terms do not involve the correlation, and the library computes them in float32
    # (`precision.float32` on the VAE's outputs): the same float32 operations on the same inputs
    # in both models. Bound: a float32 mean of 4·23·23 = 2116 non-negative terms reordered,
    # ≤ 2116·2⁻²⁴ ≈ 1.3e-4 relative (the KL sums fewer terms).
    for name in ("vae_recon", "vae_kl"):
        np.testing.assert_allclose(fft[name], direct[name], rtol=2116 * 2.0**-24, err_msg=name)
    vae_bound = 2116 * 2.0**-24 * (direct["vae_recon"] + direct["vae_kl"])
    np.testing.assert_allclose(fft["loss"], direct["loss"], rtol=1e-12, atol=vae_bound)


def test_tiny_run_reports_map_and_draws_heat_maps(trained):
    workdir = trained("encoding_detector_mnist").workdir
    metrics = json.loads((workdir / "results.json").read_text())["metrics"]
    voc = {"test/mAP", *(f"test/AP_{d}" for d in range(10))}
    assert set(metrics) == voc | {f"test/{name}" for name in coco_metrics.METRICS}
    assert {p.name for p in (workdir / "images").iterdir()} == {"detections.png", "heatmaps.png"}

    model, _ = reader.read_arrays(workdir)
    assert np.abs(model["bank"]).max() > 0  # The last checkpoint holds the calibrated bank.


def test_kitti_triplets_and_detection_on_mocked_tfds(tmp_path):
    import tensorflow_datasets as tfds

    from jvision import train

    config = load_config("encoding_detector_kitti", "tiny")
    config.data.data_dir = str(tmp_path / "tfds")
    config.eval_every_steps = config.total_steps  # One evaluation of full-size frames, at the end.
    with tfds.testing.mock_data(num_examples=12):
        results = train.train_and_evaluate(config, str(tmp_path / "run"))
    coco = {f"test/{name}" for name in coco_metrics.METRICS}
    assert set(results) == {"test/mAP", "test/AP_0"} | coco
