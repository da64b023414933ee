"""The input pipeline: metadata checks, eval/train streams, sharding, caching, gs:// staging, errors."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from contracts import dataset as data
from contracts import policy as policy_lib
from contracts import schema, storage
from trainer import augment

# Label k is a solid colour whose pattern of strong channels survives every augmentation.
PALETTE = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)]


def _write_colour_records(out_dir, per_label=6, num_shards=2):
    """Writes a train split of solid-colour images whose colour encodes their label."""
    os.makedirs(out_dir, exist_ok=True)
    shards = [schema.shard_name("train", i, num_shards) for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(out_dir, s)) for s in shards]
    k = 0
    for label, pattern in enumerate(PALETTE):
        colour = np.array(pattern) * 190 + 30
        image = np.broadcast_to(colour, (64, 64, 3)).astype(np.uint8)
        encoded = tf.io.encode_jpeg(image).numpy()
        for i in range(per_label):
            record = schema.encode_example(
                encoded, height=64, width=64, filename=f"c{label}_{i}.JPEG", source_split="train", label=label
            )
            writers[k % num_shards].write(record)
            k += 1
    for writer in writers:
        writer.close()
    metadata = {
        "schema_version": schema.SCHEMA_VERSION,
        "image_size": [64, 64],
        "classes": [{"index": i, "wnid": f"n{i:08d}", "name": f"colour {i}"} for i in range(len(PALETTE))],
        "splits": {"train": {"count": k, "shards": shards}},
    }
    with open(os.path.join(out_dir, schema.METADATA_FILE), "w") as f:
        json.dump(metadata, f)
    return out_dir


@pytest.fixture(scope="module")
def colour_info(tmp_path_factory):
    return data.load_metadata(_write_colour_records(str(tmp_path_factory.mktemp("colours"))))


@pytest.fixture(scope="module")
def info(sample_records):
    return data.load_metadata(sample_records[0])


@pytest.fixture
def records_copy(sample_records, tmp_path):
    return shutil.copytree(sample_records[0], str(tmp_path / "records"))


def _colour_labels(images):
    medians = np.median(images.reshape(images.shape[0], -1, 3), axis=1)
    high = medians > (medians.max(axis=1, keepdims=True) + medians.min(axis=1, keepdims=True)) / 2
    return np.array([PALETTE.index(tuple(int(v) for v in row)) for row in high])


def _take(dataset, n):
    return [tuple(t.numpy() for t in batch) for batch in dataset.take(n)]


def test_load_metadata_reads_classes_counts_and_shards(info, sample_records):
    metadata = sample_records[1]
    assert info.num_classes == len(metadata["classes"]) == 5
    assert list(info.class_names) == [c["name"] for c in metadata["classes"]]
    assert list(info.wnids) == sorted(info.wnids)
    assert info.image_size == 64
    assert info.split_counts == {s: metadata["splits"][s]["count"] for s in ("train", "valid", "test")}
    assert all(os.path.isabs(p) and os.path.isfile(p) for paths in info.shards.values() for p in paths)
    assert info.num_batches("valid", 8) == -(-info.split_counts["valid"] // 8)


def test_load_metadata_errors_name_the_file(records_copy, tmp_path):
    with pytest.raises(data.DataError, match=r"metadata\.json"):
        data.load_metadata(str(tmp_path / "nowhere"))
    missing = os.path.join(records_copy, schema.shard_name("valid", 1, 2))
    os.remove(missing)
    with pytest.raises(data.DataError, match=schema.shard_name("valid", 1, 2)):
        data.load_metadata(records_copy)
    path = os.path.join(records_copy, schema.METADATA_FILE)
    with open(path) as f:
        metadata = json.load(f)
    with open(path, "w") as f:
        json.dump({**metadata, "schema_version": 99}, f)
    with pytest.raises(data.DataError, match=r"metadata\.json.*schema_version 99"):
        data.load_metadata(records_copy)


@pytest.mark.parametrize(
    "split,policy,size", [("valid", "book", 64), ("test", "crop", 56), ("valid", "none", 64)]
)
def test_eval_stream_is_deterministic_and_never_augmented(info, sample_raw, split, policy, size):
    dataset = data.make_dataset(info, split, global_batch_size=8, policy=policy, features="all")
    first, second = list(dataset), list(dataset)
    assert sum(len(b["label"]) for b in first) == info.split_counts[split]
    raw_dir = sample_raw[0]
    for a, b in zip(first, second, strict=True):
        assert a["image"].dtype == tf.float32 and a["label"].dtype == tf.int32
        assert a["image"].shape[1:] == (size, size, 3)
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
        np.testing.assert_array_equal(a["filename"].numpy(), b["filename"].numpy())
        for image, name, wnid in zip(
            a["image"].numpy(), a["filename"].numpy(), a["wnid"].numpy(), strict=True
        ):
            name, wnid = name.decode(), wnid.decode()
            folder = ("train", wnid, "images") if split == "valid" else ("val", "images")
            raw = tf.io.decode_jpeg(tf.io.read_file(os.path.join(raw_dir, *folder, name)), channels=3)
            expected = policy_lib.eval_transform(policy, tf.cast(raw[None], tf.float32))[0]
            np.testing.assert_array_equal(image, expected.numpy())


def test_features_all_boxes_follow_the_centre_crop(info):
    plain = next(iter(data.make_dataset(info, "valid", global_batch_size=16, features="all")))
    cropped = next(
        iter(data.make_dataset(info, "valid", global_batch_size=16, policy="crop", features="all"))
    )
    assert set(plain) == {"image", "label", "box", "has_box", "filename", "wnid"}
    assert plain["box"].dtype == tf.int32 and plain["box"].shape == (16, 4)
    assert plain["has_box"].numpy().all()
    np.testing.assert_array_equal(cropped["box"].numpy(), np.clip(plain["box"].numpy() - 4, 0, 55))


@pytest.mark.parametrize("policy,cache", [("book", False), ("crop", True)])
def test_training_stream_augments_and_keeps_labels_aligned(colour_info, policy, cache):
    kwargs = {"global_batch_size": 8, "training": True, "seed": 3, "cache": cache}
    augmented = _take(data.make_dataset(colour_info, "train", policy=policy, **kwargs), 6)
    plain = _take(data.make_dataset(colour_info, "train", policy="none", **kwargs), 6)
    size = policy_lib.output_size(policy)
    for (images, labels), (raw_images, raw_labels) in zip(augmented, plain, strict=True):
        assert images.shape == (8, size, size, 3) and images.dtype == np.float32 and labels.dtype == np.int32
        assert images.min() >= 0.0 and images.max() <= 255.0
        np.testing.assert_array_equal(_colour_labels(images), labels)
        np.testing.assert_array_equal(labels, raw_labels)  # Same seed, same order.
        if policy == "book":  # A crop of a solid colour is the same solid colour.
            assert (np.abs(images - raw_images).mean(axis=(1, 2, 3)) > 0.5).all()
    labels = np.concatenate([b[1] for b in augmented])
    assert len(set(labels[:12])) > 2  # Shuffled across classes and shards.


@pytest.mark.parametrize("cache", [False, True])
def test_crop_training_stream_differs_from_the_eval_crop(info, cache):
    kwargs = {"global_batch_size": 8, "training": True, "seed": 4, "cache": cache}
    cropped = _take(data.make_dataset(info, "train", policy="crop", **kwargs), 3)
    plain = _take(data.make_dataset(info, "train", policy="none", **kwargs), 3)
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


def test_device_augmentation_matches_host(colour_info):
    kwargs = {"global_batch_size": 8, "training": True, "policy": "book", "seed": 5}
    host = _take(data.make_dataset(colour_info, "train", **kwargs), 3)
    device = data.make_dataset(colour_info, "train", augment_on="device", **kwargs)
    augmenter = augment.Augmenter("book")

    @tf.function
    def train_step(images, seed):
        return augmenter(images, seed)

    batches = tf.data.Dataset.zip(device, data.augment_seeds(5)).take(3)
    for (host_images, host_labels), ((images, labels), seed) in zip(host, batches, strict=True):
        assert images.shape == (8, 64, 64, 3)  # Un-augmented, at the source size.
        np.testing.assert_array_equal(labels.numpy(), host_labels)
        np.testing.assert_array_equal(train_step(images, seed).numpy(), host_images)


@pytest.mark.parametrize("pipelines", [2, 3])
def test_input_context_shards_by_file_or_by_data(info, pipelines):
    everything = {
        name
        for batch in data.make_dataset(info, "valid", global_batch_size=6, features="all")
        for name in batch["filename"].numpy()
    }
    seen = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, num_replicas_in_sync=pipelines)
        dataset = data.make_dataset(info, "valid", global_batch_size=6, features="all", input_context=context)
        batches = list(dataset)
        assert max(len(b["label"]) for b in batches) == 6 // pipelines
        seen.append({name for b in batches for name in b["filename"].numpy()})
    assert set().union(*seen) == everything
    assert sum(len(s) for s in seen) == len(everything)  # Disjoint.


def test_distribute_datasets_from_function_with_a_real_strategy(colour_info):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    dataset = strategy.distribute_datasets_from_function(
        lambda context: data.make_dataset(
            colour_info, "train", global_batch_size=8, training=True, policy="crop", input_context=context
        )
    )
    images, labels = next(iter(dataset))
    assert images.shape == (8, 56, 56, 3) and labels.dtype == tf.int32


def test_gcs_input_is_staged_through_the_emulator(sample_records, gcs_bucket, tmp_path):

    local_dir = sample_records[0]
    bucket = storage.gcs_client().bucket(gcs_bucket)
    for name in os.listdir(local_dir):
        bucket.blob(f"data/tiny/{name}").upload_from_filename(os.path.join(local_dir, name))
    cache = str(tmp_path / "cache")
    info = data.load_metadata(f"gs://{gcs_bucket}/data/tiny", cache_dir=cache)
    assert info.data_dir == cache and info.source_dir == f"gs://{gcs_bucket}/data/tiny"
    local = data.load_metadata(local_dir)
    for a, b in zip(
        data.make_dataset(info, "valid", global_batch_size=8),
        data.make_dataset(local, "valid", global_batch_size=8),
        strict=True,
    ):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())

    shard = schema.shard_name("train", 0, 2)
    mtimes = {n: os.stat(os.path.join(cache, n)).st_mtime_ns for n in os.listdir(cache)}
    with open(os.path.join(cache, shard), "rb") as f:
        changed = f.read()[::-1]  # Same size, other content: only the CRC32C tells.
    bucket.blob(f"data/tiny/{shard}").upload_from_string(changed)
    assert data.stage_data_dir(f"gs://{gcs_bucket}/data/tiny", cache) == cache
    after = {n: os.stat(os.path.join(cache, n)).st_mtime_ns for n in os.listdir(cache)}
    assert {n for n in mtimes if after[n] != mtimes[n]} == {shard}  # Only the changed file moved.
    with open(os.path.join(cache, shard), "rb") as f:
        assert f.read() == changed

    bucket.blob(f"data/tiny/{schema.shard_name('test', 1, 2)}").delete()
    with pytest.raises(data.DataError, match=rf"gs://{gcs_bucket}/data/tiny/test-00001-of-00002"):
        data.load_metadata(f"gs://{gcs_bucket}/data/tiny", cache_dir=str(tmp_path / "other"))


def test_truncated_shard_and_count_mismatch_name_the_file(records_copy):
    info = data.load_metadata(records_copy)
    report = data.verify_data(info)
    assert sum(report["valid"].values()) == info.split_counts["valid"]

    shard = info.shards["valid"][1]
    with open(shard, "rb") as f:
        content = f.read()
    with open(shard, "wb") as f:
        f.write(content[: len(content) - 100])
    with pytest.raises(data.DataError, match=os.path.basename(shard)):
        data.verify_data(info, ["valid"])
    with pytest.raises(data.DataError, match=os.path.basename(shard)), data.translate_data_errors(info):
        for _ in data.make_dataset(info, "valid", global_batch_size=4):
            pass

    path = os.path.join(records_copy, schema.METADATA_FILE)
    with open(path) as f:
        metadata = json.load(f)
    metadata["splits"]["test"]["count"] += 3
    with open(path, "w") as f:
        json.dump(metadata, f)
    with pytest.raises(data.DataError, match=r"metadata\.json: split 'test' lists"):
        data.verify_data(data.load_metadata(records_copy), ["test"])


def test_invalid_arguments_raise(info):
    with pytest.raises(ValueError, match="training=True"):
        data.make_dataset(info, "valid", global_batch_size=4, training=True)
    with pytest.raises(ValueError, match="Unknown split"):
        data.make_dataset(info, "holdout", global_batch_size=4)
    with pytest.raises(ValueError, match="augment_on"):
        data.make_dataset(info, "train", global_batch_size=4, augment_on="tpu")
    with pytest.raises(ValueError, match="features='all'"):
        data.make_dataset(info, "train", global_batch_size=4, training=True, policy="book", features="all")
