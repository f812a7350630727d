"""Embedded MNIST split, Grain pipelines, and the missing-data error."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jvision import config_lib
from jvision.data import embedded_mnist, pipeline, sources
from jvision.errors import UserError


def _config(**data):
    config = config_lib.base_config()
    config.batch_size = 16
    config.eval_batch_size = 24
    config.data.update(data)
    return config


def test_embedded_split_is_stratified_disjoint_and_documented_size():
    _, labels = embedded_mnist.load_digits()
    split = embedded_mnist.stratified_split(labels, embedded_mnist.TEST_PER_CLASS, seed=0)
    assert len(split["train"]) == 4000 and len(split["test"]) == 1000
    assert not set(split["train"]) & set(split["test"])
    np.testing.assert_array_equal(np.bincount(labels[split["test"]]), [100] * 10)
    np.testing.assert_array_equal(np.bincount(labels[split["train"]]), [400] * 10)


def test_embedded_source_holds_real_digits():
    train = sources.open_source("embedded_mnist", "train")
    test = sources.open_source("embedded_mnist", "test")
    assert (len(train), len(test)) == (4000, 1000)
    example = train[0]
    assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8
    assert 0 <= example["label"] < 10
    # Real digits: mostly black background, some near-white strokes.
    assert 0.05 < (example["image"] > 0).mean() < 0.5 and example["image"].max() > 200


def test_train_batches_binarized_deterministic_and_resumable():
    config = _config()
    first = pipeline.host_batches(config)[0]
    batches = [next(first) for _ in range(3)]
    assert batches[0]["image"].shape == (16, 28, 28, 1)
    assert batches[0]["image"].dtype == np.float32 and batches[0]["label"].dtype == np.int32
    assert set(np.unique(batches[0]["image"])) <= {0.0, 1.0}

    again = pipeline.host_batches(config)[0]
    next(again)
    state = again.get_state()
    resumed = pipeline.host_batches(config)[0]
    resumed.set_state(state)
    for expected in batches[1:]:
        np.testing.assert_array_equal(next(resumed)["image"], expected["image"])


def test_in_memory_cache_changes_nothing_but_speed():
    cached, uncached = _config(), _config(cache_max_examples=0)
    a, b = pipeline.host_batches(cached)[0], pipeline.host_batches(uncached)[0]
    for _ in range(3):
        x, y = next(a), next(b)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    # Iterator states are interchangeable too: a fresh uncached iterator given the cached one's
    # state continues where it is (and, without the state, would not).
    fresh, resumed = pipeline.host_batches(uncached)[0], pipeline.host_batches(uncached)[0]
    resumed.set_state(a.get_state())
    expected = next(a)["image"]
    np.testing.assert_array_equal(next(resumed)["image"], expected)
    assert not np.array_equal(next(fresh)["image"], expected)
    evals = [list(pipeline.EvalData(c, "test")) for c in (cached, uncached)]
    for x, y in zip(*evals, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_a_remembered_source_reads_each_example_once_and_only_when_asked():
    reads = []

    class Source:
        def __len__(self):
            return 5

        def __getitem__(self, index):
            reads.append(index)
            return {"index": index}

    source = pipeline.Remembered(Source())
    assert len(source) == 5 and reads == []  # Nothing read up front.
    assert [source[3], source[np.int64(3)], source[0], source[3]] == [
        {"index": i} for i in (3, 3, 0, 3)
    ]
    assert reads == [3, 0]


def test_epochs_are_reshuffled_and_cover_the_split():
    config = _config(binarize="none")
    config.batch_size = 1000
    it = pipeline.host_batches(config)[0]
    epoch1 = np.concatenate([next(it)["label"] for _ in range(4)])
    epoch2 = np.concatenate([next(it)["label"] for _ in range(4)])
    np.testing.assert_array_equal(np.bincount(epoch1), [400] * 10)
    assert not np.array_equal(epoch1, epoch2)


def test_eval_batches_pad_and_mask_the_tail():
    config = _config(binarize="none")
    data = pipeline.EvalData(config, "test[:50]")
    batches = list(data)
    assert len(batches) == 3  # 24 + 24 + 2 real examples.
    assert [b["mask"].sum() for b in batches] == [24, 24, 2]
    assert all(b["image"].shape == (24, 28, 28, 1) for b in batches)
    assert batches[-1]["image"][2:].sum() == 0
    # Grayscale without binarization, scaled to [0, 1].
    assert 0 < batches[0]["image"].max() <= 1 and len(np.unique(batches[0]["image"])) > 2


def test_eval_binarization_is_fixed():
    config = _config()
    first, second = (
        list(pipeline.EvalData(config, "test[:24]")),
        list(pipeline.EvalData(config, "test[:24]")),
    )
    np.testing.assert_array_equal(first[0]["image"], second[0]["image"])


def test_full_mnist_reads_through_tfds(tmp_path):
    config = _config(name="mnist", data_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=40):
        batch = next(pipeline.host_batches(config)[0])
    assert batch["image"].shape == (16, 28, 28, 1)


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(UserError, match=r"python -m jvision.data.prepare --dataset=mnist"):
        sources.open_source("mnist", "train", str(tmp_path))


def test_unknown_dataset_and_split_are_named():
    with pytest.raises(UserError, match="known datasets: embedded_mnist, full_mnist, mnist"):
        sources.open_source("cifar", "train")
    with pytest.raises(UserError, match="no split 'validation'"):
        sources.open_source("embedded_mnist", "validation")


def test_variable_size_images_are_resized_centre_cropped_and_flipped(tmp_path):
    config = _config(name="imagenet2012", data_dir=str(tmp_path), binarize="none")
    config.data.image_size = 24
    config.data.random_flip = True
    with tfds.testing.mock_data(num_examples=20):
        batch = next(pipeline.host_batches(config)[0])
        evaluation = next(iter(pipeline.EvalData(config, "validation")))
    assert batch["image"].shape == (16, 24, 24, 3)
    assert evaluation["image"].shape == (24, 24, 24, 3)


def test_resize_crop_keeps_the_centre():
    image = np.zeros((40, 20, 1), np.uint8)
    image[10:30, :, 0] = 255  # The middle half of the rows is white.
    out = pipeline.ResizeCrop(10).map({"image": image})["image"]
    assert out.shape == (10, 10, 1)
    assert out.min() > 200  # Resized to 20×10, whose centre 10 rows are the white band.


def test_random_flip_mirrors_some_images():
    images = np.arange(4 * 2 * 3).reshape(4, 2, 3, 1).astype(np.float32)
    flip = pipeline.RandomFlip(pipeline.ProcessRows(4))
    flipped = flip.random_map({"image": images}, np.random.default_rng(0))["image"]
    for original, out in zip(images, flipped, strict=True):
        assert np.array_equal(out, original) or np.array_equal(out, original[:, ::-1])
    assert not np.array_equal(flipped, images)
