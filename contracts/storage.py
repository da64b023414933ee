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
import stat
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


class UnreadableFileError(OSError):
    """A file refused unread: no regular file (a FIFO would block, a device never end), or too large."""


NOT_A_REGULAR_FILE = "not a regular file (a folder, device, FIFO or socket)"


def _check_file(uri, mode, size, max_bytes):
    if mode is not None and not stat.S_ISREG(mode):
        raise UnreadableFileError(f"{uri}: {NOT_A_REGULAR_FILE}")
    if max_bytes is not None and size > max_bytes:
        raise UnreadableFileError(f"{uri}: {size} bytes, over the limit of {max_bytes} bytes")


def check_file(uri, max_bytes=None):
    """Refuses, without opening it, a local path that is no regular file or a file over ``max_bytes``.

    A ``gs://`` object is always a regular file; its size is asked only when ``max_bytes`` is given.

    Raises:
        FileNotFoundError: When the file or object does not exist.
        UnreadableFileError: For a folder, device, FIFO or socket, or a file over ``max_bytes``.
    """
    if not is_gcs(uri):
        info = os.stat(uri)
        _check_file(uri, info.st_mode, info.st_size, max_bytes)
    elif max_bytes is not None:
        bucket, name = split_gcs(uri)
        with translated(uri):
            blob = gcs_client().bucket(bucket).blob(name)
            blob.reload()
        _check_file(uri, None, blob.size, max_bytes)


def read_bytes(uri, max_bytes=None):
    """Reads a local file or a ``gs://`` object; only a regular file, and at most ``max_bytes``.

    A FIFO, device, socket or folder is refused without a read (``/dev/zero`` never
    ends, a FIFO blocks), and a file over ``max_bytes`` before it reaches memory.

    Raises:
        FileNotFoundError: When the file or object does not exist.
        UnreadableFileError: For no regular file, or one over ``max_bytes``.
        StorageError: When ``gs://`` cannot be reached (an ``OSError`` too).
    """
    if not is_gcs(uri):
        # O_NONBLOCK: opening a FIFO without a writer returns at once (fstat then refuses it)
        # instead of waiting forever; a regular file reads as without it.
        fd = os.open(uri, os.O_RDONLY | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            _check_file(uri, info.st_mode, info.st_size, max_bytes)
            with open(fd, "rb", closefd=False) as f:
                # A read of n bytes allocates n first: ask for the size fstat gave, and one more byte,
                # which shows a file that grew since (or one that reports no size, as /proc's do).
                data = f.read(info.st_size + 1)
                if len(data) > info.st_size:
                    data += f.read() if max_bytes is None else f.read(max_bytes + 1 - len(data))
        finally:
            os.close(fd)
        _check_file(uri, None, len(data), max_bytes)  # It grew since fstat.
        return data
    bucket, name = split_gcs(uri)
    with translated(uri):
        blob = gcs_client().bucket(bucket).blob(name)
        if max_bytes is None:
            return blob.download_as_bytes()
        blob.reload()
        _check_file(uri, None, blob.size, max_bytes)
        # The generation read is the one whose size was checked.
        return blob.download_as_bytes(if_generation_match=blob.generation)


def write_bytes(uri, data):
    """Writes ``data`` to a local file (creating its folder; whole or not at all) or a ``gs://`` object.

    Raises:
        WriteError: A local file could not be written (:func:`write_atomically`).
    """
    if not is_gcs(uri):

        def write(path):
            with open(path, "wb") as f:
                f.write(data)

        write_atomically(uri, write)
        return
    bucket, name = split_gcs(uri)
    with translated(uri):
        gcs_client().bucket(bucket).blob(name).upload_from_string(data)


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)


class WriteError(OSError, ValueError):
    """A file was not written (a full disk, a file-size limit, no permission); the message names it.

    Also a ``ValueError`` (as ``io.UnsupportedOperation`` is both), so every command line's
    one-line handler of bad input catches it, the trainer's whole run included.
    """


def write_atomically(uri, write):
    """Writes a whole file or nothing: ``write(path)`` fills a temporary file that then replaces ``uri``.

    Locally the temporary file lies in ``uri``'s folder (a rename within one file system is
    atomic) under a hidden name that keeps the extension (Keras saves only to ``*.keras``);
    it is synced before the rename (a full disk can first show at the flush) and removed on
    any failure, so a failed write leaves the file that was there, if any, unchanged and no
    temporary file behind. A ``gs://`` object is written to a local temporary folder, then
    uploaded: an upload replaces an object whole.

    Args:
        uri: The file (local or ``gs://``); its folder is created.
        write: Called with a local path; writes the whole file there.

    Raises:
        WriteError: An ``OSError`` while writing, naming ``uri`` and the cause.
    """
    uri = os.fspath(uri)  # A pathlib.Path too, as open() takes one.
    name = os.path.basename(uri.rstrip("/"))
    with contextlib.ExitStack() as stack:
        if is_gcs(uri):
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="storage-"))
            temporary = os.path.join(folder, name)
        else:
            folder = os.path.dirname(os.path.abspath(uri))
            temporary = os.path.join(folder, f".{name}.{os.urandom(4).hex()}.tmp{os.path.splitext(name)[1]}")
            stack.callback(_remove_quietly, temporary)  # Gone after the rename; left by a failure.
        try:
            os.makedirs(folder, exist_ok=True)
            write(temporary)
            if is_gcs(uri):
                upload_file(temporary, uri)
            else:
                with open(temporary, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(temporary, uri)
        except WriteError:
            raise
        except OSError as error:
            cause = error.strerror or str(error)
            failed = WriteError(f"{uri}: not written ({cause}); a file already there is unchanged")
            failed.errno = error.errno  # ENOSPC stays ENOSPC; the message stays this one line.
            raise failed from error


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


class UnsafeNameError(ValueError):
    """An object name that, joined to a local folder, would land outside it or on a folder's place."""


def local_path(folder, relative, uri):
    """Returns local ``folder`` joined with the ``/``-separated object name ``relative`` (below ``uri``).

    An object name is any string: ``a/../../x`` or ``/x`` joined to a folder would write
    outside it, ``a//b`` or ``./a`` collide with other names; each is refused, nothing written.

    Raises:
        UnsafeNameError: For an empty, ``.`` or ``..`` segment (an absolute name has an empty one).
    """
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeNameError(
            f"{uri}: object {relative!r} has an empty, '.' or '..' path segment; refused, as a local "
            "copy of it would be written outside the folder or over another name"
        )
    return os.path.join(folder, *parts)


@contextlib.contextmanager
def local_folder(uri):
    """Yields a local folder holding every file under ``uri`` (the folder counterpart of :func:`local_file`).

    A local path is yielded as it is; the objects under a ``gs://`` prefix are
    copied into a temporary folder, keeping their relative paths, that is
    removed on exit. The project's client is used (it honours the GCS emulator)
    rather than TensorFlow's own ``gs://`` file system.

    Raises:
        UnsafeNameError: For an object name that would leave the folder (:func:`local_path`).
    """
    if not is_gcs(uri):
        yield uri
        return
    root = uri.rstrip("/") + "/"
    with tempfile.TemporaryDirectory(prefix="storage-") as folder:
        for remote in list_files(uri, recursive=True):
            local = local_path(folder, remote[len(root) :], uri)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            download_file(remote, local)
        yield folder
