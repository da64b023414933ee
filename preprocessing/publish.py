"""Staging and publishing the job's output, so a failed or killed job leaves no partial output.

The job writes everything (manifests, shards, dead letters, counts,
``metadata.json``) into a fresh folder inside ``--output-dir``,
``.incomplete-<id>/``, and moves the finished files into place only once the
whole job has succeeded, ``metadata.json`` last. Until then ``--output-dir``
holds what it held before: an earlier complete output survives a failed
``--overwrite`` run. A failure removes the staging folder; only a process
killed outright (SIGKILL, a lost machine) leaves it, and the next run with
``--overwrite`` removes it.

Moving is a rename on a local disk (same file system: the folder is inside
``--output-dir``) and a server-side copy plus delete per object on ``gs://``,
which has no rename; ``metadata.json`` still goes last, so its presence keeps
meaning a complete output.
"""

import contextlib
import logging
import os
import shutil
import uuid

from contracts import schema, storage
from preprocessing import fetch

LOGGER = logging.getLogger("preprocessing")


def _move(src, dst):
    if fetch.is_local(src) and fetch.is_local(dst):
        os.replace(src, dst)
        return
    from google.api_core import exceptions

    client = storage.gcs_client()
    src_bucket, src_name = storage.split_gcs(src)
    dst_bucket, dst_name = storage.split_gcs(dst)
    try:
        bucket = client.bucket(src_bucket)
        bucket.copy_blob(bucket.blob(src_name), client.bucket(dst_bucket), dst_name)
    except exceptions.GoogleAPIError as error:
        message = str(error).splitlines()[0]
        raise storage.StorageError(f"cannot move {src} to {dst}: {type(error).__name__}: {message}") from None
    fetch.delete([src])


def _remove_tree(folder):
    if fetch.is_local(folder):
        shutil.rmtree(folder, ignore_errors=True)
    else:
        fetch.delete(fetch.list_tree(folder))


class Staging:
    """The job's private folder inside ``--output-dir``; removed on exit unless published.

    Use as a context manager: leaving the block by an exception (or without
    :meth:`publish`) removes the folder, and a local ``--output-dir`` the job
    created is removed too when nothing else is in it.

    Args:
        output_dir: The ``--output-dir`` (local folder or ``gs://`` prefix).

    Raises:
        OSError: When the folder cannot be created (e.g. a file is in the way).
    """

    def __init__(self, output_dir):
        self.output_dir = output_dir
        self._local = fetch.is_local(output_dir)
        self._created = self._local and not os.path.exists(output_dir)
        self.path = fetch.join(output_dir, f"{fetch.STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
        self._published = False
        if self._local:
            os.makedirs(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if not self._published:
            self.discard()
        return False

    def _outputs(self):
        # Top-level files only: manifests live in a sub-folder, working files start with a dot.
        names = [path.replace("\\", "/").rsplit("/", 1)[-1] for path in storage.list_files(self.path)]
        names = [n for n in names if not n.startswith(".") and ".tmp-" not in n]
        if schema.METADATA_FILE not in names:
            raise RuntimeError(f"internal error: {schema.METADATA_FILE} was not written into {self.path}")
        return sorted(names, key=lambda name: (name == schema.METADATA_FILE, name))

    def publish(self):
        """Replaces the outputs of an earlier run with the staged ones, ``metadata.json`` last.

        Returns:
            ``(published file names, number of files of an earlier run removed)``.
        """
        names = self._outputs()
        # The check was made when the job started; this removes metadata.json first.
        removed = fetch.prepare_output_dir(self.output_dir, overwrite=True, keep=self.path)
        for name in names:
            _move(fetch.join(self.path, name), fetch.join(self.output_dir, name))
        self._published = True
        _remove_tree(self.path)
        return names, removed

    def keep_rejects(self):
        """Moves the staged dead letters to ``--output-dir/rejected.failed.jsonl`` for a failed job.

        Returns:
            ``(staged path, kept path)``, or ``None`` when there were none.
        """
        staged = fetch.join(self.path, schema.REJECTED_FILE)
        if not fetch.exists(staged):
            return None
        kept = fetch.join(self.output_dir, fetch.FAILED_REJECTS_FILE)
        _move(staged, kept)
        return staged, kept

    def discard(self):
        """Removes the staging folder (and a local ``--output-dir`` the job created, if now empty)."""
        try:
            _remove_tree(self.path)
        except OSError as error:
            # Runs while another error unwinds: report this one, do not hide that one.
            LOGGER.warning("could not remove the staging folder %s: %s", self.path, error)
        if self._created:
            # Not empty when dead letters were kept or someone else put files there.
            with contextlib.suppress(OSError):
                os.rmdir(self.output_dir)
