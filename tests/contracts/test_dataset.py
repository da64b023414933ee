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

@pytest.fixture
def records_copy(sample_records, tmp_path):
    return shutil.copytree(sample_records[0], str(tmp_path / "records"))


def _take(dataset, n):
    return [tuple(t.numpy() for t in batch) for batch in dataset.take(n)]


def test_load_metadata_reads_classes_counts_and_shards(sample_info, sample_records):
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
def test_eval_stream_is_deterministic_and_never_augmented(sample_info, sample_raw, split, policy, size):
    dataset = data.make_dataset(sample_info, split, global_batch_size=8, policy=policy, features="all")
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


def test_features_all_boxes_follow_the_centre_crop(sample_info):
    plain = next(iter(data.make_dataset(sample_info, "valid", global_batch_size=16, features="all")))
    cropped = next(
        iter(data.make_dataset(sample_info, "valid", global_batch_size=16, policy="crop", features="all"))
    )
    assert set(plain) == {"image", "label", "box", "has_box", "filename", "wnid"}
    assert plain["box"].dtype == tf.int32 and plain["box"].shape == (16, 4)
    assert plain["has_box"].numpy().all()
    np.testing.assert_array_equal(cropped["box"].numpy(), np.clip(plain["box"].numpy() - 4, 0, 55))


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
        dataset = data.make_dataset(sample_info, "valid", global_batch_size=6, features="all", input_context=context)
        batches = list(dataset)
        assert max(len(b["label"]) for b in batches) == 6 // pipelines
        seen.append({name for b in batches for name in b["filename"].numpy()})
    assert set().union(*seen) == everything
    assert sum(len(s) for s in seen) == len(everything)  # Disjoint.


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
        data.make_dataset(sample_info, "valid", global_batch_size=8),
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
    report = data.verify_data(sample_info)
    assert sum(report["valid"].values()) == info.split_counts["valid"]

    shard = info.shards["valid"][1]
    with open(shard, "rb") as f:
        content = f.read()
    with open(shard, "wb") as f:
        f.write(content[: len(content) - 100])
    with pytest.raises(data.DataError, match=os.path.basename(shard)):
        data.verify_data(sample_info, ["valid"])
    with pytest.raises(data.DataError, match=os.path.basename(shard)), data.translate_data_errors(sample_info):
        for _ in data.make_dataset(sample_info, "valid", global_batch_size=4):
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
    with pytest.raises(ValueError, match="Unknown split"):
        data.make_dataset(sample_info, "holdout", global_batch_size=4)
    with pytest.raises(ValueError, match="augment_on"):
        data.make_dataset(sample_info, "train", global_batch_size=4, augment_on="tpu")
    with pytest.raises(ValueError, match="features='all'"):
        data.make_dataset(sample_info, "train", global_batch_size=4, training=True, policy="book", features="all")
