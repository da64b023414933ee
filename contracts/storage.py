"""The one storage layer: every ``gs://`` read and write outside the Beam pipeline.

google-cloud-storage is used for every ``gs://`` path (it honours
``STORAGE_EMULATOR_HOST``, so the tests reach all of it through an emulator);
TensorFlow's ``tf.io.gfile`` is never pointed at ``gs://``. Local paths go
through plain file I/O.

Output folders that are written locally and copied to ``gs://`` (the
trainer's job dir, explain's TensorBoard folder) are :mod:`contracts.mirror`'s.
"""

import base64
import contextlib
import hashlib
import os
import tempfile

GCS_SCHEME = "gs://"
_READ_SIZE = 1 << 20


def is_gcs(path):
    """Returns whether ``path`` is a ``gs://`` URI."""
    return str(path).startswith(GCS_SCHEME)


def split_gcs(uri):
    """Splits ``gs://bucket/a/b`` into ``("bucket", "a/b")``."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, prefix = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, prefix.strip("/")


def join(base, *parts):
    """Joins path parts with ``/`` for URIs and ``os.path.join`` for local paths."""
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


_CLIENTS = {}


class StorageError(OSError):
    """A ``gs://`` call failed (no access, no such bucket, a network error); the message names the URI."""


@contextlib.contextmanager
def translated(uri):
    """A context manager: google-cloud-storage errors become ``OSError``s naming ``uri``."""
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions

    try:
        yield
    except exceptions.NotFound:
        raise FileNotFoundError(f"{uri}: no such object or bucket") from None
    except (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as error:
        raise StorageError(f"{uri}: {type(error).__name__}: {str(error).splitlines()[0]}") from None


def gcs_client(project=None):
    """Returns a google-cloud-storage client; anonymous against an emulator.

    The one place clients are made: with ``STORAGE_EMULATOR_HOST`` set (tests,
    local emulators) no credentials are looked up, else Application Default
    Credentials apply. A client is kept per process and endpoint, because
    looking credentials up costs more than reading a small object, and the
    Beam job reads thousands of them.
    """
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    key = (project, emulator, os.getpid())
    if key not in _CLIENTS:
        from google.cloud import storage

        if emulator:
            from google.auth.credentials import AnonymousCredentials

            name = project or os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator")
            _CLIENTS[key] = storage.Client(project=name, credentials=AnonymousCredentials())
        else:
            _CLIENTS[key] = storage.Client(project=project)
    return _CLIENTS[key]


def file_checksums(path):
    """Returns the base64 ``(crc32c, md5)`` of a local file, as GCS reports them."""
    import google_crc32c

    crc, md5 = google_crc32c.Checksum(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ_SIZE), b""):
            crc.update(block)
            md5.update(block)
    return base64.b64encode(crc.digest()).decode("ascii"), base64.b64encode(md5.digest()).decode("ascii")


def file_sha256(path):
    """Returns the SHA-256 of a local file (lowercase hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def read_bytes(uri):
    """Reads a local file or a ``gs://`` object.

    Raises:
        FileNotFoundError: When the file or object does not exist.
        StorageError: When ``gs://`` cannot be reached (an ``OSError`` too).
    """
    if not is_gcs(uri):
        with open(uri, "rb") as f:
            return f.read()
    bucket, name = split_gcs(uri)
    with translated(uri):
        return gcs_client().bucket(bucket).blob(name).download_as_bytes()


def write_bytes(uri, data):
    """Writes ``data`` to a local file (creating its folder) or a ``gs://`` object."""
    if not is_gcs(uri):
        os.makedirs(os.path.dirname(uri) or ".", exist_ok=True)
        with open(uri, "wb") as f:
            f.write(data)
        return
    bucket, name = split_gcs(uri)
    with translated(uri):
        gcs_client().bucket(bucket).blob(name).upload_from_string(data)


def exists(uri):
    """Returns whether a local path or a ``gs://`` object exists."""
    if not is_gcs(uri):
        return os.path.exists(uri)
    bucket, name = split_gcs(uri)
    with translated(uri):
        return bool(name) and gcs_client().bucket(bucket).blob(name).exists()


def list_files(folder, recursive=False):
    """Returns the full paths of the files in ``folder`` (and below it when ``recursive``), sorted.

    A missing local folder, or a ``gs://`` prefix with no objects, has none.
    """
    if not is_gcs(folder):
        if not os.path.isdir(folder):
            return []
        if recursive:
            return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)
        return sorted(e.path for e in os.scandir(folder) if e.is_file())
    bucket, prefix = split_gcs(folder)
    prefix = f"{prefix}/" if prefix else ""
    with translated(folder):
        blobs = gcs_client().list_blobs(bucket, prefix=prefix, delimiter=None if recursive else "/")
        return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))


def list_folders(folder):
    """Returns the full paths of the sub-folders directly inside ``folder``, sorted."""
    if not is_gcs(folder):
        if not os.path.isdir(folder):
            return []
        return sorted(e.path for e in os.scandir(folder) if e.is_dir())
    bucket, prefix = split_gcs(folder)
    with translated(folder):
        blobs = gcs_client().list_blobs(bucket, prefix=f"{prefix}/" if prefix else "", delimiter="/")
        for _ in blobs.pages:  # The prefixes are known once every page was read.
            pass
    return sorted(f"{GCS_SCHEME}{bucket}/{p.rstrip('/')}" for p in blobs.prefixes)


def delete(uris):
    """Deletes files (local or ``gs://``); missing ones are ignored."""
    for uri in uris:
        if not is_gcs(uri):
            if os.path.exists(uri):
                os.remove(uri)
            continue
        bucket, name = split_gcs(uri)
        try:
            with translated(uri):
                gcs_client().bucket(bucket).blob(name).delete()
        except FileNotFoundError:
            pass


def upload_file(local_path, uri):
    """Copies a local file to a ``gs://`` object (resumable for large files)."""
    bucket, name = split_gcs(uri)
    with translated(uri):
        gcs_client().bucket(bucket).blob(name).upload_from_filename(local_path)


def download_file(uri, local_path):
    """Copies a ``gs://`` object to a local file.

    Raises:
        FileNotFoundError: When the object does not exist.
    """
    bucket, name = split_gcs(uri)
    try:
        with translated(uri):
            gcs_client().bucket(bucket).blob(name).download_to_filename(local_path)
    except FileNotFoundError:
        if os.path.exists(local_path):
            os.remove(local_path)
        raise


@contextlib.contextmanager
def local_file(uri, suffix=""):
    """Yields a local path holding the file at ``uri``.

    A local path is yielded as it is; a ``gs://`` object is copied into a
    temporary folder that is removed on exit (a model can weigh hundreds of MB).
    """
    if not is_gcs(uri):
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="storage-") as folder:
        local = os.path.join(folder, os.path.basename(uri.rstrip("/")) or f"object{suffix}")
        download_file(uri, local)
        yield local


@contextlib.contextmanager
def local_folder(uri):
    """Yields a local folder holding every file under ``uri`` (the folder counterpart of :func:`local_file`).

    A local path is yielded as it is; the objects under a ``gs://`` prefix are
    copied into a temporary folder, keeping their relative paths, that is
    removed on exit. The project's client is used (it honours the GCS emulator)
    rather than TensorFlow's own ``gs://`` file system.
    """
    if not is_gcs(uri):
        yield uri
        return
    root = uri.rstrip("/") + "/"
    with tempfile.TemporaryDirectory(prefix="storage-") as folder:
        for remote in list_files(uri, recursive=True):
            local = os.path.join(folder, *remote[len(root) :].split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            download_file(remote, local)
        yield folder
