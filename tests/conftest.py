"""Shared fixtures: generated datasets in the tiny-imagenet-200 layout, their
records written by the Beam job itself (and their :class:`DatasetInfo`), and a
real GCS emulator on 127.0.0.1. :func:`free_port` is the one free-port helper
of the suite (``from tests.conftest import free_port``)."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from preprocessing import sample
from tests import datasets


@pytest.fixture(scope="session")
def sample_raw(tmp_path_factory):
    """A small generated raw dataset: 5 classes, 40 train and 8 val images each.

    Returns:
        ``(raw_dir, info)`` where ``info`` is what
        :func:`preprocessing.sample.write_sample_dataset` returned.
    """
    raw_dir = str(tmp_path_factory.mktemp("raw") / "tiny-imagenet-200")
    spec = sample.SampleSpec(classes=5, train_per_class=40, val_per_class=8, test_images=6, seed=1)
    info = sample.write_sample_dataset(raw_dir, spec)
    return raw_dir, info


@pytest.fixture(scope="session")
def sample_records(sample_raw, tmp_path_factory):
    """TFRecords + metadata.json of :func:`sample_raw`, written by the Beam job once per session.

    Returns:
        ``(data_dir, metadata)``.
    """
    raw_dir, _ = sample_raw
    out = str(tmp_path_factory.mktemp("records") / "data")
    return out, datasets.write_records(raw_dir, out)


@pytest.fixture(scope="session")
def sample_info(sample_records):
    """:func:`contracts.dataset.load_metadata` of :func:`sample_records` (read once per session)."""
    from contracts import dataset

    return dataset.load_metadata(sample_records[0])


def free_port():
    """Returns a TCP port that is free on 127.0.0.1 (for emulators, servers and TF_CONFIG clusters)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """Starts gcp-storage-emulator on 127.0.0.1 and points clients at it.

    Sets ``STORAGE_EMULATOR_HOST`` (honoured by google-cloud-storage and Beam's
    GCS file system) for the whole session and yields its URL.
    """
    port = free_port()
    data_dir = tmp_path_factory.mktemp("gcs")
    exe = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "gcp_storage_emulator"]
    proc = subprocess.Popen(
        [*cmd, "-d", str(data_dir), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("gcp-storage-emulator exited at start") from None
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("gcp-storage-emulator did not start within 30 s")
    previous = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["GOOGLE_CLOUD_PROJECT"] = "test-project"
    yield url
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    """Creates a fresh bucket in the emulator and returns its name."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    name = f"bucket-{abs(hash(request.node.nodeid)) % 10**8}-{int(time.time() * 1000) % 10**6}"
    client.create_bucket(name)
    return name
