"""gs:// input and output through Beam's FileSystems, against the real GCS emulator."""

import json
import os
import zipfile

import pytest
import tensorflow as tf
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from contracts import schema
from preprocessing import sample, task

SHARDS = [
    "--num-shards-train",
    "2",
    "--num-shards-valid",
    "1",
    "--num-shards-test",
    "1",
    "--num-shards-unlabeled",
    "1",
]


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("gcs-raw") / "tiny-imagenet-200"
    spec = sample.SampleSpec(classes=2, train_per_class=10, val_per_class=2, test_images=2, seed=4)
    return str(raw), sample.write_sample_dataset(str(raw), spec)


def _client():
    return storage.Client(project="test-project", credentials=AnonymousCredentials())


def _upload_folder(bucket, folder, prefix):
    for directory, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(directory, name)
            bucket.blob(f"{prefix}/{os.path.relpath(path, folder)}").upload_from_filename(path)


def _records(bucket, prefix, metadata):
    records = {}
    for split, info in metadata["splits"].items():
        for shard in info["shards"]:
            data = bucket.blob(f"{prefix}/{shard}").download_as_bytes()
            records.update({(split, r["filename"]): r for r in _parse_tfrecord(data)})
    return records


def _parse_tfrecord(data):
    """Parses TFRecord framing by hand (the shard came from the emulator, not a file)."""
    records, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 8], "little")
        records.append(schema.decode_example(data[pos + 12 : pos + 12 + length]))
        pos += 12 + length + 4
    return records


def _local_records(out_dir):
    with open(os.path.join(out_dir, schema.METADATA_FILE)) as f:
        metadata = json.load(f)
    records = {}
    for split, info in metadata["splits"].items():
        for shard in info["shards"]:
            for raw in tf.data.TFRecordDataset(os.path.join(out_dir, shard)).as_numpy_iterator():
                record = schema.decode_example(raw)
                records[(split, record["filename"])] = record
    return metadata, records


def test_gs_round_trip_folder_and_zip(small_raw, gcs_bucket, tmp_path, capsys):
    raw, info = small_raw
    bucket = _client().bucket(gcs_bucket)
    _upload_folder(bucket, raw, "raw/tiny-imagenet-200")
    local_out = tmp_path / "local"
    assert task.run(["--raw-dir", raw, "--output-dir", str(local_out), *SHARDS]) == 0
    local_metadata, local_records = _local_records(str(local_out))

    # The folder above the dataset root is accepted too: the root is found by wnids.txt.
    out = f"gs://{gcs_bucket}/out"
    code = task.run(["--raw-dir", f"gs://{gcs_bucket}/raw", "--output-dir", out, *SHARDS])
    assert code == 0, capsys.readouterr().err
    names = sorted(b.name for b in bucket.list_blobs(prefix="out/"))
    metadata = json.loads(bucket.blob(f"out/{schema.METADATA_FILE}").download_as_text())
    shards = [s for split in metadata["splits"].values() for s in split["shards"]]
    assert names == sorted(f"out/{n}" for n in [*shards, schema.METADATA_FILE, schema.REJECTED_FILE])
    assert bucket.blob(f"out/{schema.REJECTED_FILE}").download_as_bytes() == b""
    remote_records = _records(bucket, "out", metadata)
    assert remote_records == local_records
    assert len(remote_records) == len(info["train_boxes"]) + len(info["val"]) + len(info["test"])
    assert {k: v for k, v in metadata.items() if k != "source"} == {
        k: v for k, v in local_metadata.items() if k != "source"
    }
    assert metadata["source"] == f"gs://{gcs_bucket}/raw"

    # Refused without --overwrite, like a local folder.
    code = task.run(["--raw-dir", f"gs://{gcs_bucket}/raw", "--output-dir", out, *SHARDS])
    assert code == 2 and "--overwrite" in capsys.readouterr().err

    archive = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for directory, _, files in os.walk(raw):
            for name in files:
                path = os.path.join(directory, name)
                zf.write(path, os.path.join("tiny-imagenet-200", os.path.relpath(path, raw)))
    bucket.blob("tiny-imagenet-200.zip").upload_from_filename(str(archive))
    bucket.blob("out/train-00005-of-00009.tfrecord").upload_from_string(b"stale")
    code = task.run(
        ["--raw-dir", f"gs://{gcs_bucket}/tiny-imagenet-200.zip", "--output-dir", out, "--overwrite", *SHARDS]
    )
    assert code == 0, capsys.readouterr().err
    assert not bucket.blob("out/train-00005-of-00009.tfrecord").exists(), "stale shards are removed"
    metadata = json.loads(bucket.blob(f"out/{schema.METADATA_FILE}").download_as_text())
    assert _records(bucket, "out", metadata) == local_records
