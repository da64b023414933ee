"""GCS object names that would leave a local folder are refused (issue 27, security list).

An object name is any string: ``backup/../../x``, ``backup//x`` or ``/x``
joined to a local folder would write outside it (or collide with another
name). :func:`contracts.storage.local_path` refuses them for both copies of a
``gs://`` prefix into a local folder: the job-dir mirror's download (the
trainer's resume fetches the backup this way) and ``storage.local_folder``
(``trainer.predict`` and ``trainer.evaluate`` load a ``gs://`` SavedModel export this way).
The objects are put into the GCS emulator with the plain google-cloud-storage client.
Real GCS holds a name such as ``a/../b`` (only ``.`` and ``..`` as whole names
are refused), but the emulator cannot (its in-memory file system refuses a
back reference and drops the connection), so such a name is added to the
client's listings instead (:func:`_plant`): the code under test lists it, and
must refuse it before any download.
"""

import os

import pytest

from contracts import mirror, storage
from trainer import predict

ESCAPING = "../../../escaped.txt"


def _plant(monkeypatch, bucket, name):
    """Adds object ``name`` to every listing of the project's client that its prefix matches."""
    client = storage.gcs_client()
    original = client.list_blobs

    def listing(bucket_or_name, prefix=None, **kwargs):
        blobs = list(original(bucket_or_name, prefix=prefix, **kwargs))
        if name.startswith(prefix or ""):
            blobs.append(client.bucket(bucket).blob(name))
        return blobs

    monkeypatch.setattr(client, "list_blobs", listing)


def _put(monkeypatch, bucket, name, data=b"planted"):
    """Puts object ``name`` into the emulator, or into the listings when it holds a ``..`` segment."""
    if ".." in name.split("/"):
        _plant(monkeypatch, bucket, name)
    else:
        storage.gcs_client().bucket(bucket).blob(name).upload_from_string(data)


def _folders(bucket):
    return {"job": f"gs://{bucket}/jobs/run", "backup": f"gs://{bucket}/jobs/run/backup"}


def _files_below(folder):
    return sorted(
        os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files
    )


@pytest.mark.parametrize(
    "relative", ["..", "../x", "a/../../x", "/etc/x", "a//b", "./a", "a/./b", "a/..", "", "a/"]
)
def test_local_path_refuses_dot_dot_absolute_and_empty_segments(relative):
    with pytest.raises(storage.UnsafeNameError) as error:
        storage.local_path("/work/folder", relative, "gs://b/prefix")
    assert str(error.value).startswith(f"gs://b/prefix: object {relative!r} has an empty, '.' or '..' path")


@pytest.mark.parametrize("relative", ["a", "a/b.txt", "..a/b..", "a/...", ".hidden/x"])
def test_local_path_joins_plain_names_below_the_folder(relative):
    joined = storage.local_path("/work/folder", relative, "gs://b/prefix")
    assert joined == os.path.join("/work/folder", *relative.split("/"))
    assert os.path.commonpath([joined, "/work/folder"]) == "/work/folder"


@pytest.mark.parametrize("name", [ESCAPING, "/absolute.txt", "ok/../../up.txt"])
def test_job_outputs_download_refuses_an_escaping_backup_name_and_writes_nothing(
    gcs_bucket, tmp_path, monkeypatch, name
):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # The mirror's staging folder is made here.
    bucket = storage.gcs_client().bucket(gcs_bucket)
    bucket.blob("jobs/run/backup/gen-1/state.json").upload_from_string(b"{}")
    _put(monkeypatch, gcs_bucket, f"jobs/run/backup/{name}")
    outputs = mirror.JobOutputs(_folders(gcs_bucket))
    assert outputs.mirrors["job"].local.startswith(str(tmp_path))
    with pytest.raises(storage.UnsafeNameError, match="path segment"):
        outputs.download("backup")
    # Every name is checked before the first download: nothing written, inside the folder or out.
    assert _files_below(tmp_path) == []


def test_job_outputs_download_keeps_plain_names_and_skips_folder_placeholders(
    gcs_bucket, tmp_path, monkeypatch
):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    bucket = storage.gcs_client().bucket(gcs_bucket)
    bucket.blob("jobs/run/backup/").upload_from_string(b"")  # The console's "folder" object.
    bucket.blob("jobs/run/backup/gen-1/state.json").upload_from_string(b'{"epoch": 3}')
    bucket.blob("jobs/run/backup/gen-1/..weights..").upload_from_string(b"w")
    outputs = mirror.JobOutputs(_folders(gcs_bucket))
    assert outputs.download("backup") == 2
    with open(outputs.local("backup", "gen-1", "state.json")) as f:
        assert f.read() == '{"epoch": 3}'
    assert _files_below(outputs.local("backup")) == ["gen-1/..weights..", "gen-1/state.json"]


def test_local_folder_refuses_an_escaping_name(gcs_bucket, tmp_path, monkeypatch):
    bucket = storage.gcs_client().bucket(gcs_bucket)
    bucket.blob("export/saved_model.pb").upload_from_string(b"pb")
    _put(monkeypatch, gcs_bucket, f"export/variables/{ESCAPING}")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    with (
        pytest.raises(storage.UnsafeNameError, match=r"escaped\.txt"),
        storage.local_folder(f"gs://{gcs_bucket}/export"),
    ):
        pass
    assert _files_below(tmp_path) == []  # Nothing escaped, and the temporary copy is gone.


def test_predict_on_a_gcs_export_with_an_escaping_name_is_one_error_line(
    gcs_bucket, tmp_path, monkeypatch, capsys
):
    bucket = storage.gcs_client().bucket(gcs_bucket)
    bucket.blob("export/saved_model.pb").upload_from_string(b"pb")
    _put(monkeypatch, gcs_bucket, f"export/{ESCAPING}")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    assert predict.main(["--model", f"gs://{gcs_bucket}/export", "x.jpg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: gs://{gcs_bucket}/export")
    assert "'..' path segment" in err[0]
    assert _files_below(tmp_path) == []
