"""The one storage layer: every ``gs://`` read and write outside the Beam pipeline.

google-cloud-storage is used for every ``gs://`` path (it honours
``STORAGE_EMULATOR_HOST``, so the tests reach all of it through an emulator);
TensorFlow's ``tf.io.gfile`` is never pointed at ``gs://``. Local paths go
through plain file I/O.

The trainer always writes into a local folder: Keras, TensorBoard and
``tf.train.Checkpoint`` then behave the same everywhere. A :class:`Mirror`
pairs an output URI with that local folder: for a local URI they are the same
folder; for ``gs://bucket/prefix`` the folder is a private staging directory
that :meth:`Mirror.upload` copies to the bucket.
"""

import base64
import contextlib
import hashlib
import os
import shutil
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
def _translated(uri):
    """Turns google-cloud-storage errors into ``OSError``s naming ``uri``, so callers catch one type."""
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
    with _translated(uri):
        return gcs_client().bucket(bucket).blob(name).download_as_bytes()


def write_bytes(uri, data):
    """Writes ``data`` to a local file (creating its folder) or a ``gs://`` object."""
    if not is_gcs(uri):
        os.makedirs(os.path.dirname(uri) or ".", exist_ok=True)
        with open(uri, "wb") as f:
            f.write(data)
        return
    bucket, name = split_gcs(uri)
    with _translated(uri):
        gcs_client().bucket(bucket).blob(name).upload_from_string(data)


def exists(uri):
    """Returns whether a local path or a ``gs://`` object exists."""
    if not is_gcs(uri):
        return os.path.exists(uri)
    bucket, name = split_gcs(uri)
    with _translated(uri):
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
    with _translated(folder):
        blobs = gcs_client().list_blobs(bucket, prefix=prefix, delimiter=None if recursive else "/")
        return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))


def list_folders(folder):
    """Returns the full paths of the sub-folders directly inside ``folder``, sorted."""
    if not is_gcs(folder):
        if not os.path.isdir(folder):
            return []
        return sorted(e.path for e in os.scandir(folder) if e.is_dir())
    bucket, prefix = split_gcs(folder)
    with _translated(folder):
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
            with _translated(uri):
                gcs_client().bucket(bucket).blob(name).delete()
        except FileNotFoundError:
            pass


def upload_file(local_path, uri):
    """Copies a local file to a ``gs://`` object (resumable for large files)."""
    bucket, name = split_gcs(uri)
    with _translated(uri):
        gcs_client().bucket(bucket).blob(name).upload_from_filename(local_path)


def download_file(uri, local_path):
    """Copies a ``gs://`` object to a local file.

    Raises:
        FileNotFoundError: When the object does not exist.
    """
    bucket, name = split_gcs(uri)
    try:
        with _translated(uri):
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


class Mirror:
    """A local working folder mirrored to an output URI.

    Args:
        uri: Local folder or ``gs://bucket/prefix``.
        staging_root: Parent of the staging folders of ``gs://`` URIs; a new
            temporary folder when ``None``.
    """

    def __init__(self, uri, staging_root=None):
        self.uri = uri.rstrip("/") if is_gcs(uri) else uri
        if is_gcs(uri):
            root = staging_root or tempfile.mkdtemp(prefix="trainer-staging-")
            digest = hashlib.sha1(self.uri.encode()).hexdigest()[:12]
            self.local = os.path.join(root, digest)
        else:
            self.local = uri
        os.makedirs(self.local, exist_ok=True)
        self._uploaded = {}

    @property
    def remote(self):
        """Whether the URI is a ``gs://`` prefix."""
        return is_gcs(self.uri)

    def download(self, subdir=""):
        """Copies ``uri/subdir`` (if any) into the working folder; a no-op for local URIs.

        Returns:
            The number of files downloaded.
        """
        if not self.remote:
            return 0
        bucket_name, prefix = split_gcs(join(self.uri, subdir) if subdir else self.uri)
        client = gcs_client()
        count = 0
        for blob in client.list_blobs(bucket_name, prefix=prefix + "/" if prefix else None):
            relative = blob.name[len(prefix) :].lstrip("/") if prefix else blob.name
            if not relative or relative.endswith("/"):
                continue
            target = os.path.join(self.local, subdir, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            blob.download_to_filename(target)
            self._uploaded[os.path.relpath(target, self.local)] = _signature(target)
            count += 1
        return count

    def upload(self, subdir=""):
        """Makes the URI match the working folder: new or changed files up, deleted ones removed.

        Files go up in the order they were last written, so a file written
        last to mark a complete set (a backup generation's ``state.json``)
        reaches the bucket last, and a copy cut short looks incomplete there
        too. Objects this mirror uploaded or downloaded whose local file is
        gone (an old backup generation) are deleted after the uploads.

        Returns:
            The number of files uploaded (0 for local URIs).
        """
        if not self.remote:
            return 0
        bucket_name, prefix = split_gcs(self.uri)
        bucket = gcs_client().bucket(bucket_name)
        changed = []
        for dirpath, _, filenames in os.walk(os.path.join(self.local, subdir)):
            for filename in filenames:
                path = os.path.join(dirpath, filename)
                relative = os.path.relpath(path, self.local)
                signature = _signature(path)
                if self._uploaded.get(relative) != signature:
                    changed.append((signature[1], relative, path, signature))
        for _, relative, path, signature in sorted(changed):
            bucket.blob(self._object_name(prefix, relative)).upload_from_filename(path)
            self._uploaded[relative] = signature
        inside = os.path.normpath(subdir) + os.sep if subdir else ""
        for relative in [r for r in self._uploaded if r.startswith(inside)]:
            if not os.path.exists(os.path.join(self.local, relative)):
                with contextlib.suppress(FileNotFoundError), _translated(self.uri):
                    bucket.blob(self._object_name(prefix, relative)).delete()
                del self._uploaded[relative]
        return len(changed)

    @staticmethod
    def _object_name(prefix, relative):
        name = f"{prefix}/{relative}" if prefix else relative
        return name.replace(os.sep, "/")

    def delete(self, subdir):
        """Deletes ``subdir`` locally and, for ``gs://`` URIs, remotely."""
        shutil.rmtree(os.path.join(self.local, subdir), ignore_errors=True)
        stale = subdir.rstrip("/") + "/"
        self._uploaded = {k: v for k, v in self._uploaded.items() if not k.startswith(stale)}
        if not self.remote:
            return
        bucket_name, prefix = split_gcs(join(self.uri, subdir))
        client = gcs_client()
        for blob in client.list_blobs(bucket_name, prefix=prefix + "/"):
            blob.delete()

    def read_text(self, relative):
        """Returns the text of ``uri/relative``, or ``None`` when it does not exist."""
        if not self.remote:
            path = os.path.join(self.local, relative)
            if not os.path.exists(path):
                return None
            with open(path) as f:
                return f.read()
        bucket_name, prefix = split_gcs(join(self.uri, relative))
        blob = gcs_client().bucket(bucket_name).blob(prefix)
        if not blob.exists():
            return None
        return blob.download_as_text()


def _signature(path):
    stat = os.stat(path)
    return (stat.st_size, stat.st_mtime_ns)


class JobOutputs:
    """The run's output folders, each mapped to a local working path.

    Folders below ``job_dir`` share the job dir's mirror; others (Vertex AI's
    ``AIP_*`` folders) get their own. Only the chief uploads.

    Args:
        folders: ``name -> uri``; must include ``job``.
        chief: Whether this worker uploads.
    """

    def __init__(self, folders, chief=True):
        self.chief = chief
        job_uri = folders["job"].rstrip("/")
        self.mirrors = {"job": Mirror(job_uri)}
        self._where = {"job": ("job", "")}
        for name, uri in folders.items():
            if name == "job":
                continue
            uri = uri.rstrip("/")
            if uri.startswith(job_uri + "/"):
                self._where[name] = ("job", uri[len(job_uri) + 1 :])
            else:
                self.mirrors[name] = Mirror(uri)
                self._where[name] = (name, "")
        for name in self._where:
            os.makedirs(self.local(name), exist_ok=True)

    def local(self, name, *parts):
        """Returns the local working path of folder ``name`` (joined with ``parts``)."""
        mirror, subdir = self._where[name]
        return os.path.join(self.mirrors[mirror].local, subdir, *parts)

    def download(self, name):
        """Fetches folder ``name`` from ``gs://`` (e.g. a backup before resuming)."""
        mirror, subdir = self._where[name]
        return self.mirrors[mirror].download(subdir)

    def read_text(self, name, relative):
        """Returns the text of a file of folder ``name`` at its URI, or ``None``."""
        mirror, subdir = self._where[name]
        return self.mirrors[mirror].read_text(os.path.join(subdir, relative) if subdir else relative)

    def delete(self, name):
        """Deletes folder ``name`` locally and remotely (chief only)."""
        if not self.chief:
            return
        mirror, subdir = self._where[name]
        if subdir:
            self.mirrors[mirror].delete(subdir)
        else:
            for entry in os.listdir(self.mirrors[mirror].local):
                self.mirrors[mirror].delete(entry)

    def sync(self):
        """Uploads every folder's new files (chief only); returns the number uploaded."""
        if not self.chief:
            return 0
        return sum(mirror.upload() for mirror in self.mirrors.values())
