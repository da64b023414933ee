"""The dataset contract's reader: metadata, eval/train streams, sharding, caching, gs:// staging, errors.

Augmentation policies are the trainer's (tests/trainer/test_data.py); here the
reader is handed a plain ``augment`` callable and checked to apply it with the
per-batch seeds of :func:`contracts.dataset.augment_seeds`.
"""

import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import dataset as data
from contracts import policy as policy_lib
from contracts import schema, storage
from tests import datasets, tiers


@pytest.fixture
def records_copy(sample_records, tmp_path):
    return shutil.copytree(sample_records[0], str(tmp_path / "records"))


def _raw_image(raw_dir, split, name, wnid):
    """Decodes the raw JPEG a record of ``split`` was made from."""
    folder = ("val", "images") if split == "test" else ("train", wnid, "images")
    return schema.decode_jpeg(tf.io.read_file(os.path.join(raw_dir, *folder, name)))


def test_load_metadata_reads_classes_counts_and_shards(sample_info, sample_records, sample_raw):
    metadata = sample_records[1]
    assert sample_info.num_classes == len(metadata["classes"]) == 5
    assert list(sample_info.class_names) == [c["name"] for c in datasets.read_classes(sample_raw[0])]
    assert list(sample_info.wnids) == sorted(sample_raw[1]["wnids"])
    assert sample_info.image_size == 64
    # sample_raw: 40 train images per class (10% of each to valid), 8 val per class, 6 test images.
    assert sample_info.split_counts == {"train": 180, "valid": 20, "test": 40, "unlabeled": 6}
    for split, entry in metadata["splits"].items():
        assert sample_info.shards[split] == tuple(
            os.path.join(sample_records[0], name) for name in entry["shards"]
        )
    assert all(os.path.isfile(p) for paths in sample_info.shards.values() for p in paths)
    assert sample_info.num_batches("valid", 8) == 3
    assert sample_info.num_batches("train", 8, drop_remainder=True) == 22


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
def test_eval_stream_is_deterministic_and_never_augmented(sample_info, sample_raw, split, policy, size):
    dataset = data.make_dataset(sample_info, split, global_batch_size=8, policy=policy, features="all")
    first, second = list(dataset), list(dataset)
    assert sum(len(b["label"]) for b in first) == sample_info.split_counts[split]
    raw_dir = sample_raw[0]
    for a, b in zip(first, second, strict=True):
        assert a["image"].dtype == tf.float32 and a["label"].dtype == tf.int32
        assert a["image"].shape[1:] == (size, size, 3)
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
        np.testing.assert_array_equal(a["filename"].numpy(), b["filename"].numpy())
        for image, name, wnid in zip(
            a["image"].numpy(), a["filename"].numpy(), a["wnid"].numpy(), strict=True
        ):
            raw = _raw_image(raw_dir, split, name.decode(), wnid.decode())
            expected = policy_lib.eval_transform(policy, tf.cast(raw[None], tf.float32))[0]
            np.testing.assert_array_equal(image, expected.numpy())


def test_features_all_boxes_follow_the_centre_crop(sample_info):
    plain = next(iter(data.make_dataset(sample_info, "valid", global_batch_size=16, features="all")))
    cropped = next(
        iter(data.make_dataset(sample_info, "valid", global_batch_size=16, policy="crop", features="all"))
    )
    assert set(plain) == {"image", "label", "box", "has_box", "filename", "wnid"}
    assert plain["box"].dtype == tf.int32 and plain["box"].shape == (16, 4)
    assert plain["has_box"].numpy().all()
    np.testing.assert_array_equal(cropped["box"].numpy(), np.clip(plain["box"].numpy() - 4, 0, 55))


@tiers.dev("streams several epochs through tf.data: seconds")
def test_augment_callable_gets_the_per_batch_seeds(sample_info, sample_raw):
    def add_seed(images, seed):
        # A small offset keeps float32 pixel sums exact.
        return images + tf.cast(seed[0] % 1000, tf.float32)

    kwargs = {"global_batch_size": 8, "training": True, "seed": 6}
    # Without an augment function the training stream is the decoded JPEGs at
    # the source size, whatever the policy (the trainer's --augment-on device).
    plain = list(data.make_dataset(sample_info, "train", policy="crop", features="all", **kwargs).take(4))
    augmented = list(data.make_dataset(sample_info, "train", augment=add_seed, **kwargs).take(4))
    per_epoch = sample_info.num_batches("train", 8, drop_remainder=True)
    seeds = [seed.numpy() for seed in data.augment_seeds(6, per_epoch).take(4)]
    index = {wnid: i for i, wnid in enumerate(sample_info.wnids)}
    for batch, (images, labels), seed in zip(plain, augmented, seeds, strict=True):
        assert batch["image"].shape == (8, 64, 64, 3) and batch["image"].dtype == tf.float32
        for image, name, wnid, label in zip(
            batch["image"].numpy(),
            batch["filename"].numpy(),
            batch["wnid"].numpy(),
            batch["label"].numpy(),
            strict=True,
        ):
            raw = _raw_image(sample_raw[0], "train", name.decode(), wnid.decode())
            np.testing.assert_array_equal(image, raw.numpy().astype(np.float32))
            assert label == index[wnid.decode()]
        np.testing.assert_array_equal(labels.numpy(), batch["label"].numpy())  # Same seed, same order.
        np.testing.assert_array_equal(images.numpy(), batch["image"].numpy() + seed[0] % 1000)
    assert len({int(seed[0]) for seed in seeds}) == 4  # A new seed for every batch.

    # Evaluation batches are never augmented.
    for (images, labels), (expected, expected_labels) in zip(
        data.make_dataset(sample_info, "valid", global_batch_size=8, augment=add_seed),
        data.make_dataset(sample_info, "valid", global_batch_size=8),
        strict=True,
    ):
        np.testing.assert_array_equal(images.numpy(), expected.numpy())
        np.testing.assert_array_equal(labels.numpy(), expected_labels.numpy())


@pytest.mark.parametrize("cache", [False, True])
@tiers.dev("streams several epochs through tf.data: seconds")
def test_training_stream_reshuffles_every_epoch(sample_info, cache):
    def names(**kwargs):
        dataset = data.make_dataset(
            sample_info, "train", global_batch_size=20, training=True, seed=3, features="all", **kwargs
        )
        return [batch["filename"].numpy() for batch in dataset.take(18)]  # Two epochs of 9 batches.

    batches = names(cache=cache)
    first, second = np.concatenate(batches[:9]), np.concatenate(batches[9:])
    assert len(set(first)) == len(set(second)) == sample_info.split_counts["train"]  # Every record once.
    assert not np.array_equal(first, second)
    labels_of_first_batch = {name.split(b"_")[0] for name in batches[0]}
    assert len(labels_of_first_batch) > 2  # Shuffled across classes and shards.
    # A pure function of (seed, epoch, step): started at epoch 1 step 4, the same batches.
    for a, b in zip(names(cache=cache, initial_epoch=1, initial_step=4)[:5], batches[13:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_cache_serves_later_passes_from_memory(records_copy):
    info = data.load_metadata(records_copy)
    cached = data.make_dataset(info, "valid", global_batch_size=8, cache=True)
    streamed = data.make_dataset(info, "valid", global_batch_size=8)
    first = list(cached)
    for path in info.shards["valid"]:
        os.remove(path)
    again = list(cached)
    assert len(again) == len(first) == 3
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    with pytest.raises(tf.errors.NotFoundError):
        list(streamed)


@pytest.mark.parametrize("pipelines", [2, 3])
def test_input_context_shards_by_file_or_by_data(sample_info, pipelines):
    everything = {
        name
        for batch in data.make_dataset(sample_info, "valid", global_batch_size=6, features="all")
        for name in batch["filename"].numpy()
    }
    seen = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, num_replicas_in_sync=pipelines)
        dataset = data.make_dataset(
            sample_info, "valid", global_batch_size=6, features="all", input_context=context
        )
        batches = list(dataset)
        assert max(len(b["label"]) for b in batches) == 6 // pipelines
        seen.append({name for b in batches for name in b["filename"].numpy()})
    assert set().union(*seen) == everything
    assert sum(len(s) for s in seen) == len(everything)  # Disjoint.


def test_gcs_input_is_staged_through_the_emulator(sample_records, sample_info, gcs_bucket, tmp_path):
    local_dir = sample_records[0]
    bucket = storage.gcs_client().bucket(gcs_bucket)
    for name in os.listdir(local_dir):
        bucket.blob(f"data/tiny/{name}").upload_from_filename(os.path.join(local_dir, name))
    cache = str(tmp_path / "cache")
    info = data.load_metadata(f"gs://{gcs_bucket}/data/tiny", cache_dir=cache)
    assert info.data_dir == cache and info.source_dir == f"gs://{gcs_bucket}/data/tiny"
    for a, b in zip(
        data.make_dataset(info, "valid", global_batch_size=8),
        data.make_dataset(sample_info, "valid", global_batch_size=8),
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


def test_invalid_arguments_raise(sample_info):
    with pytest.raises(ValueError, match="training=True"):
        data.make_dataset(sample_info, "valid", global_batch_size=4, training=True)
    with pytest.raises(ValueError, match="Unknown split 'holdout'"):
        data.make_dataset(sample_info, "holdout", global_batch_size=4)
    with pytest.raises(ValueError, match="features must be one of"):
        data.make_dataset(sample_info, "valid", global_batch_size=4, features="boxes")
    with pytest.raises(ValueError, match="global_batch_size must be >= 1, got 0"):
        data.make_dataset(sample_info, "valid", global_batch_size=0)
    with pytest.raises(ValueError, match="features='all'"):
        data.make_dataset(
            sample_info,
            "train",
            global_batch_size=4,
            training=True,
            augment=lambda images, seed: images,
            features="all",
        )


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_the_one_jpeg_decoder_gives_pils_pixels(mode):
    # PIL decodes in the Beam job and trainer.predict, TensorFlow in the input pipeline and
    # the export: TensorFlow's default (fast) DCT is up to 6 levels off PIL's on this file.
    noise = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).convert(mode).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(schema.decode_jpeg(data).numpy(), pil)
    assert np.abs(tf.io.decode_jpeg(data, channels=3).numpy().astype(int) - pil).max() > 0
