"""contracts.storage on local paths and on gs:// through the GCS emulator.

Objects are put into and read out of the bucket with the plain
google-cloud-storage client, so each function of the storage layer is checked
against what the bucket really holds, not against itself.
"""

import os

import numpy as np
import pytest

from contracts import mirror, storage

# Every byte value, so no text decoding or newline translation hides in the path.
PAYLOAD = bytes(range(256)) * 3


@pytest.fixture
def bucket(gcs_bucket):
    return storage.gcs_client().bucket(gcs_bucket)


def test_uri_helpers():
    assert storage.is_gcs("gs://b/x") and not storage.is_gcs("/gs/x") and not storage.is_gcs("b/x")
    assert storage.split_gcs("gs://b/a/c/") == ("b", "a/c")
    assert storage.split_gcs("gs://b") == ("b", "")
    with pytest.raises(ValueError, match="not a gs:// URI: '/tmp/x'"):
        storage.split_gcs("/tmp/x")
    with pytest.raises(ValueError, match="without a bucket"):
        storage.split_gcs("gs:///x")
    assert storage.join("gs://b/jobs/", "/run/", "model.keras") == "gs://b/jobs/run/model.keras"
    assert storage.join("/tmp/jobs", "run", "model.keras") == os.path.join("/tmp/jobs", "run", "model.keras")


def test_gcs_write_read_exists(gcs_bucket, bucket):
    uri = f"gs://{gcs_bucket}/deep/folder/blob.bin"
    assert not storage.exists(uri)
    storage.write_bytes(uri, PAYLOAD)
    assert bucket.blob("deep/folder/blob.bin").download_as_bytes() == PAYLOAD
    assert storage.exists(uri)
    # A "folder" is not an object, nor is the bucket itself.
    assert not storage.exists(f"gs://{gcs_bucket}/deep/folder")
    assert not storage.exists(f"gs://{gcs_bucket}")

    bucket.blob("uploaded.txt").upload_from_string(b"written by another client")
    assert storage.read_bytes(f"gs://{gcs_bucket}/uploaded.txt") == b"written by another client"
    storage.write_bytes(uri, b"second version")
    assert storage.read_bytes(uri) == b"second version"


def test_gcs_missing_object_is_file_not_found(gcs_bucket):
    missing = f"gs://{gcs_bucket}/no/such.json"
    with pytest.raises(FileNotFoundError, match=f"{missing}: no such object"):
        storage.read_bytes(missing)
    with pytest.raises(FileNotFoundError), storage.local_file(missing):
        pass


def test_local_write_read_exists(tmp_path):
    path = str(tmp_path / "new" / "folder" / "blob.bin")
    assert not storage.exists(path)
    storage.write_bytes(path, PAYLOAD)  # creates the folders
    with open(path, "rb") as f:
        assert f.read() == PAYLOAD
    assert storage.exists(path) and storage.read_bytes(path) == PAYLOAD
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "missing.bin"))
    with storage.local_file(path) as local:
        assert local == path  # a local file is used in place, never copied
    assert os.path.exists(path)


def test_gcs_local_file_is_a_temporary_copy(gcs_bucket, bucket):
    bucket.blob("models/backbone.weights.h5").upload_from_string(PAYLOAD)
    with storage.local_file(f"gs://{gcs_bucket}/models/backbone.weights.h5") as local:
        assert os.path.basename(local) == "backbone.weights.h5"  # Keras picks the format by suffix
        with open(local, "rb") as f:
            assert f.read() == PAYLOAD
    assert not os.path.exists(local) and not os.path.exists(os.path.dirname(local))


def test_mirror_uploads_new_and_changed_files_only(gcs_bucket, bucket, tmp_path):
    folder_mirror = mirror.Mirror(f"gs://{gcs_bucket}/logs/run/", staging_root=str(tmp_path))
    assert folder_mirror.remote and folder_mirror.local.startswith(str(tmp_path))
    os.makedirs(os.path.join(folder_mirror.local, "train"))
    for name, text in (("explain.json", "{}"), ("train/events.1", "a")):
        with open(os.path.join(folder_mirror.local, name), "w") as f:
            f.write(text)
    assert folder_mirror.upload() == 2
    assert folder_mirror.upload() == 0
    with open(os.path.join(folder_mirror.local, "train", "events.1"), "a") as f:
        f.write("bc")
    assert folder_mirror.upload() == 1
    assert bucket.blob("logs/run/train/events.1").download_as_text() == "abc"
    assert folder_mirror.read_text("explain.json") == "{}" and folder_mirror.read_text("nothing.json") is None

    fresh = mirror.Mirror(f"gs://{gcs_bucket}/logs/run", staging_root=str(tmp_path / "other"))
    assert fresh.download() == 2
    with open(os.path.join(fresh.local, "train", "events.1")) as f:
        assert f.read() == "abc"
    fresh.delete("train")
    assert sorted(blob.name for blob in storage.gcs_client().list_blobs(gcs_bucket)) == [
        "logs/run/explain.json"
    ]


@pytest.mark.long  # builds Inception-ResNet-v2
def test_inception_resnet_v2_loads_backbone_weights_from_gcs(gcs_bucket, bucket, tmp_path):
    """``build_model(..., weights="gs://...")`` loads the uploaded backbone, not random weights."""
    from trainer import models

    # The backbone resizes every input to 224 inside the model: a small input costs no less.
    source = models.build_model("inception_resnet_v2", 3, input_size=75, weights=None, seed=0)
    local = str(tmp_path / "backbone.weights.h5")
    models.backbone_model(source).save_weights(local)
    bucket.blob("weights/backbone.weights.h5").upload_from_filename(local)
    uri = f"gs://{gcs_bucket}/weights/backbone.weights.h5"
    loaded = models.build_model("inception_resnet_v2", 3, input_size=75, weights=uri, seed=1)
    expected = models.backbone_model(source).weights
    actual = models.backbone_model(loaded).weights
    assert [tuple(w.shape) for w in actual] == [tuple(w.shape) for w in expected]
    # Convolution kernels from the start, the middle and the end (batch-norm
    # arrays start equal whatever the seed); seed=1 alone would give other kernels.
    kernels = [i for i, w in enumerate(expected) if len(w.shape) == 4]
    for index in (kernels[0], kernels[len(kernels) // 2], kernels[-1]):
        np.testing.assert_array_equal(actual[index].numpy(), expected[index].numpy())
