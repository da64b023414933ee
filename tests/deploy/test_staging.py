"""Staging a local dataset to the GCS emulator, and the Dataflow launch command."""

import os
import shlex
import shutil

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from contracts import voice
from deploy import config, staging, submit

KIB = 1024


@pytest.fixture
def dataset(sample_raw, tmp_path):
    """A copy of the generated raw dataset plus one shard big enough for a resumable upload."""
    raw_dir, _ = sample_raw
    src = tmp_path / "tiny-imagenet-200"
    shutil.copytree(raw_dir, src)
    (src / "records").mkdir()
    (src / "records" / "train-00000-of-00001.tfrecord").write_bytes(os.urandom(700 * KIB))
    return str(src)


def _client():
    return storage.Client(project="test-project", credentials=AnonymousCredentials())


def _spec(src, bucket):
    # Thresholds small enough that the 700 KiB shard goes up in three resumable chunks.
    return config.StageJob(
        src=src, dest=f"gs://{bucket}/datasets/tiny", resumable_threshold=512 * KIB, chunk_size=256 * KIB
    )


def test_stage_round_trip_skips_unchanged(gcs_bucket, dataset):
    files = staging.local_files(dataset)
    assert len(files) > 50
    lines = []
    first = staging.stage(_spec(dataset, gcs_bucket), client=_client(), log=lines.append)
    assert len(first.uploaded) == len(files) and first.skipped == []
    assert first.bytes_uploaded == sum(os.path.getsize(p) for _, p in files)
    assert any("upload" in line and "train-00000-of-00001.tfrecord" in line for line in lines)
    assert lines[-1].endswith(f"{len(files)} uploaded, 0 unchanged")

    again = staging.stage(_spec(dataset, gcs_bucket), client=_client(), log=lines.append)
    assert again.uploaded == [] and len(again.skipped) == len(files)

    changed = os.path.join(dataset, "wnids.txt")
    with open(changed, "a") as f:
        f.write("n99999999\n")
    third = staging.stage(_spec(dataset, gcs_bucket), client=_client(), log=lines.append)
    assert third.uploaded == ["datasets/tiny/wnids.txt"]
    assert len(third.skipped) == len(files) - 1

    bucket = _client().bucket(gcs_bucket)
    for relative, path in files:
        with open(path, "rb") as f:
            assert bucket.blob(f"datasets/tiny/{relative}").download_as_bytes() == f.read(), relative


def test_stage_cli_prints_progress(gcs_bucket, tmp_path, capsys):
    src = tmp_path / "records"
    src.mkdir()
    for i in range(3):
        (src / f"valid-{i:05d}-of-00003.tfrecord").write_bytes(bytes([i]) * (10 * KIB + i))
    assert submit.main(["stage", "--src", str(src), "--dest", f"gs://{gcs_bucket}/records"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [voice.LINE_PATTERN.fullmatch(line).group(2, 3) for line in captured.err.splitlines()]
    assert lines[0][0] == "submit" and lines[0][1].startswith("[1/3] upload gs://")
    assert lines[-1][1].endswith("3 uploaded, 0 unchanged")
    assert submit.main(["stage", "--src", str(src), "--dest", f"gs://{gcs_bucket}/records/"]) == 0
    assert capsys.readouterr().err.splitlines()[-1].endswith("0 uploaded, 3 unchanged")
    names = sorted(b.name for b in _client().list_blobs(gcs_bucket))
    assert names == [f"records/valid-{i:05d}-of-00003.tfrecord" for i in range(3)]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dest", "/tmp/not-a-bucket"], "--dest must be a gs://bucket/path URL"),
        (["--chunk-size", "1000"], "--chunk-size must be a positive multiple of 262144"),
    ],
)
def test_stage_bad_flags(tmp_path, capsys, flags, message):
    argv = ["stage", "--src", str(tmp_path), "--dest", "gs://bucket-x/p", *flags]
    with pytest.raises(SystemExit) as exit_info:
        submit.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0]


DATAFLOW = [
    "dataflow",
    "--raw-dir",
    "gs://my-bucket/raw/tiny-imagenet-200",
    "--output-dir",
    "gs://my-bucket/records",
    "--project",
    "my-project",
    "--region",
    "europe-west1",
    "--temp-location",
    "gs://my-bucket/tmp",
    "--name",
    "preprocess-1",
    "--max-num-workers",
    "20",
    "--machine-type",
    "n2-standard-4",
]


def test_dataflow_dry_run_command(capsys):
    assert submit.main([*DATAFLOW, "--dry-run", "--", "--num-shards-train", "16"]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert words[:3] == ["python", "-m", "preprocessing.task"]
    options = dict(zip(words[3::2], words[4::2], strict=False))
    assert options == {
        "--raw-dir": "gs://my-bucket/raw/tiny-imagenet-200",
        "--output-dir": "gs://my-bucket/records",
        "--runner": "DataflowRunner",
        "--project": "my-project",
        "--region": "europe-west1",
        "--temp_location": "gs://my-bucket/tmp",
        "--job_name": "preprocess-1",
        "--setup_file": "./setup.py",
        "--max_num_workers": "20",
        "--machine_type": "n2-standard-4",
        "--num-shards-train": "16",
    }


def test_dataflow_failure_is_the_exit_status(monkeypatch):
    # The job runs in-process; its failure (one the flag check cannot foresee, such as too
    # many rejected images) must not turn into a successful launch.
    from preprocessing import task

    monkeypatch.setattr(task, "run", lambda argv: 1)
    assert submit.main([*DATAFLOW, "--", "--valid-fraction", "0.2"]) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temp-location", "/tmp/scratch"], "--temp-location must be a gs://bucket/path URL"),
        (["--raw-dir", "data/raw"], "--raw-dir must be a gs://bucket/path URL"),
        (["--raw-dir", "gs://my-bucket/raw/t.zip"], "--raw-dir must be an extracted gs:// folder"),
        (["--max-num-workers", "0"], "--max-num-workers must be at least 1"),
    ],
)
def test_dataflow_bad_flags(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        submit.main([*DATAFLOW, *flags, "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0]
