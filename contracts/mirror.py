"""Output folders written locally and mirrored to ``gs://``.

The trainer always writes into a local folder: Keras, TensorBoard and
``tf.train.Checkpoint`` then behave the same everywhere. A :class:`Mirror`
pairs an output URI with that local folder: for a local URI they are the same
folder; for ``gs://bucket/prefix`` the folder is a private staging directory
that :meth:`Mirror.upload` copies to the bucket (through :mod:`contracts.storage`).
:class:`JobOutputs` holds the mirrors of one training run's folders.
"""

import contextlib
import hashlib
import os
import shutil
import tempfile

from contracts import storage


class Mirror:
    """A local working folder mirrored to an output URI.

    Args:
        uri: Local folder or ``gs://bucket/prefix``.
        staging_root: Parent of the staging folders of ``gs://`` URIs; a new
            temporary folder when ``None``.
    """

    def __init__(self, uri, staging_root=None):
        self.uri = uri.rstrip("/") if storage.is_gcs(uri) else uri
        if storage.is_gcs(uri):
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
        return storage.is_gcs(self.uri)

    def download(self, subdir=""):
        """Copies ``uri/subdir`` (if any) into the working folder; a no-op for local URIs.

        Folder placeholders (names ending with ``/``) are skipped. An object name
        with an empty, ``.`` or ``..`` segment (``backup/../../x``, ``backup//x``)
        is refused before anything is written: joined to the working folder it
        would land outside it (:func:`contracts.storage.local_path`).

        Returns:
            The number of files downloaded.

        Raises:
            contracts.storage.UnsafeNameError: For such a name.
        """
        if not self.remote:
            return 0
        uri = storage.join(self.uri, subdir) if subdir else self.uri
        bucket_name, prefix = storage.split_gcs(uri)
        client = storage.gcs_client()
        folder = os.path.join(self.local, subdir)
        blobs = []
        with storage.translated(uri):
            for blob in client.list_blobs(bucket_name, prefix=prefix + "/" if prefix else None):
                if blob.name.endswith("/"):
                    continue
                relative = blob.name[len(prefix) + 1 :] if prefix else blob.name
                # Every name is checked before the first download: a refused listing leaves nothing behind.
                blobs.append((blob, storage.local_path(folder, relative, uri)))
        count = 0
        for blob, target in blobs:
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
        bucket_name, prefix = storage.split_gcs(self.uri)
        bucket = storage.gcs_client().bucket(bucket_name)
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
                with contextlib.suppress(FileNotFoundError), storage.translated(self.uri):
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
        bucket_name, prefix = storage.split_gcs(storage.join(self.uri, subdir))
        client = storage.gcs_client()
        for blob in client.list_blobs(bucket_name, prefix=prefix + "/"):
            blob.delete()

    def read_text(self, relative):
        """Returns the text of ``uri/relative``, or ``None`` when it does not exist."""
        if not self.remote:
            path = os.path.join(self.local, relative)
            if not os.path.exists(path):
                return None
            return storage.read_bytes(path).decode("utf-8")  # Refuses a FIFO rather than block on it.
        bucket_name, prefix = storage.split_gcs(storage.join(self.uri, relative))
        blob = storage.gcs_client().bucket(bucket_name).blob(prefix)
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
