"""The trainer's training streams: host augmentation inside tf.data, device augmentation, distribution."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import dataset as contract
from contracts import policy as policy_lib
from tests import datasets, tiers
from trainer import augment, data

# Label k is a solid colour whose pattern of strong channels survives every augmentation.
PALETTE = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)]


def _write_colour_raw(raw_dir, per_label=6):
    """Writes a tiny-imagenet-200 folder of solid-colour train images whose colour encodes their label.

    Zero-padded wnids sort in palette order, so the job's label of a class is its palette index.
    """
    wnids = [f"n{label:08d}" for label in range(len(PALETTE))]
    os.makedirs(os.path.join(raw_dir, "val", "images"))
    os.makedirs(os.path.join(raw_dir, "test", "images"))
    with open(os.path.join(raw_dir, "val", "val_annotations.txt"), "w"):
        pass  # No labelled val/ images: only the train split is read here.
    with open(os.path.join(raw_dir, "wnids.txt"), "w") as f:
        f.write("".join(f"{wnid}\n" for wnid in wnids))
    with open(os.path.join(raw_dir, "words.txt"), "w") as f:
        f.write("".join(f"{wnid}\tcolour {label}\n" for label, wnid in enumerate(wnids)))
    for wnid, pattern in zip(wnids, PALETTE, strict=True):
        images = os.path.join(raw_dir, "train", wnid, "images")
        os.makedirs(images)
        colour = tuple(int(v) * 190 + 30 for v in pattern)
        rows = []
        for i in range(per_label):
            name = f"{wnid}_{i}.JPEG"
            Image.new("RGB", (64, 64), colour).save(os.path.join(images, name), format="JPEG", quality=95)
            rows.append(f"{name}\t0\t0\t63\t63\n")
        with open(os.path.join(raw_dir, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("".join(rows))


@pytest.fixture(scope="module")
def colour_info(tmp_path_factory):
    """The Beam job's records of the solid-colour folder: 36 train records, nothing held out."""
    root = tmp_path_factory.mktemp("colours")
    _write_colour_raw(str(root / "raw"))
    metadata = datasets.write_records(str(root / "raw"), str(root / "records"), valid_fraction=0)
    assert metadata["splits"]["train"]["count"] == 6 * len(PALETTE)
    return contract.load_metadata(str(root / "records"))


def _colour_labels(images):
    medians = np.median(images.reshape(images.shape[0], -1, 3), axis=1)
    high = medians > (medians.max(axis=1, keepdims=True) + medians.min(axis=1, keepdims=True)) / 2
    return np.array([PALETTE.index(tuple(int(v) for v in row)) for row in high])


def _take(dataset, n):
    return [tuple(t.numpy() for t in batch) for batch in dataset.take(n)]


@pytest.mark.parametrize("policy,cache", [("book", False), ("crop", True)])
def test_training_stream_augments_and_keeps_labels_aligned(colour_info, policy, cache):
    kwargs = {"global_batch_size": 8, "training": True, "seed": 3, "cache": cache, "augment_on": "host"}
    augmented = _take(data.make_dataset(colour_info, "train", policy=policy, **kwargs), 6)
    plain = _take(data.make_dataset(colour_info, "train", policy="none", **kwargs), 6)
    size = policy_lib.output_size(policy)
    for (images, labels), (raw_images, raw_labels) in zip(augmented, plain, strict=True):
        assert images.shape == (8, size, size, 3) and images.dtype == np.float32 and labels.dtype == np.int32
        assert images.min() >= 0.0 and images.max() <= 255.0
        np.testing.assert_array_equal(_colour_labels(raw_images), raw_labels)
        np.testing.assert_array_equal(_colour_labels(images), labels)
        np.testing.assert_array_equal(labels, raw_labels)  # Same seed, same order.
        if policy == "book":  # A crop of a solid colour is the same solid colour.
            assert (np.abs(images - raw_images).mean(axis=(1, 2, 3)) > 0.5).all()
    labels = np.concatenate([b[1] for b in augmented])
    assert len(set(labels[:12])) > 2  # Shuffled across classes and shards.


@pytest.mark.parametrize("cache", [False, True])
@tiers.dev("streams the training and evaluation pipelines: seconds")
def test_crop_training_stream_differs_from_the_eval_crop(sample_info, cache):
    kwargs = {"global_batch_size": 8, "training": True, "seed": 4, "cache": cache}
    cropped = _take(data.make_dataset(sample_info, "train", policy="crop", **kwargs), 3)
    plain = _take(data.make_dataset(sample_info, "train", policy="none", **kwargs), 3)
    for (images, labels), (raw_images, raw_labels) in zip(cropped, plain, strict=True):
        np.testing.assert_array_equal(labels, raw_labels)
        assert images.shape == (8, 56, 56, 3)
        centre = np.asarray(policy_lib.eval_transform("crop", tf.constant(raw_images)))
        assert (np.abs(images - centre).mean(axis=(1, 2, 3)) > 0.5).all()


def test_seeded_training_runs_repeat_exactly(colour_info):
    def run(seed):
        dataset = data.make_dataset(
            colour_info, "train", global_batch_size=8, training=True, policy="book", seed=seed
        )
        return _take(dataset, 5)

    first, again, other = run(1), run(1), run(2)
    for (a_images, a_labels), (b_images, b_labels) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_labels, b_labels)
    assert any(not np.array_equal(a[1], c[1]) for a, c in zip(first, other, strict=True))
    assert any(not np.array_equal(a[0], c[0]) for a, c in zip(first, other, strict=True))


def test_device_augmentation_matches_host(colour_info):
    kwargs = {"global_batch_size": 8, "training": True, "policy": "book", "seed": 5}
    host = _take(data.make_dataset(colour_info, "train", augment_on="host", **kwargs), 3)
    device = data.make_dataset(colour_info, "train", augment_on="device", **kwargs)
    augmenter = augment.Augmenter("book")

    @tf.function
    def train_step(images, seed):
        return augmenter(images, seed)

    seeds = contract.augment_seeds(5, colour_info.num_batches("train", 8, drop_remainder=True))
    batches = tf.data.Dataset.zip(device, seeds).take(3)
    for (host_images, host_labels), ((images, labels), seed) in zip(host, batches, strict=True):
        assert images.shape == (8, 64, 64, 3)  # Un-augmented, at the source size.
        np.testing.assert_array_equal(_colour_labels(images.numpy()), labels.numpy())
        np.testing.assert_array_equal(labels.numpy(), host_labels)
        assert not np.array_equal(images.numpy(), host_images)
        np.testing.assert_array_equal(train_step(images, seed).numpy(), host_images)


@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_evaluation_streams_get_the_eval_transform_wherever_training_augments(sample_info, augment_on):
    ours = data.make_dataset(sample_info, "valid", global_batch_size=8, policy="crop", augment_on=augment_on)
    reference = contract.make_dataset(sample_info, "valid", global_batch_size=8, policy="crop")
    for (images, labels), (expected, expected_labels) in zip(ours, reference, strict=True):
        assert images.shape[1:] == (56, 56, 3)
        np.testing.assert_array_equal(images.numpy(), expected.numpy())
        np.testing.assert_array_equal(labels.numpy(), expected_labels.numpy())


def test_distribute_datasets_from_function_with_a_real_strategy(colour_info):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    dataset = strategy.distribute_datasets_from_function(
        lambda context: data.make_dataset(
            colour_info,
            "train",
            global_batch_size=8,
            training=True,
            policy="crop",
            augment_on="host",
            input_context=context,
        )
    )
    images, labels = next(iter(dataset))
    assert images.shape == (8, 56, 56, 3) and labels.dtype == tf.int32
    np.testing.assert_array_equal(_colour_labels(images.numpy()), labels.numpy())
