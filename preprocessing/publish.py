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

Also checks the output folder before the job starts (:func:`check_output_dir`)
and recognises the files an earlier run of the job left there (:func:`our_outputs`).
"""

import contextlib
import logging
import os
import shutil
import uuid

from contracts import schema, storage
from preprocessing import fetch

LOGGER = logging.getLogger("preprocessing")


def _is_working_folder(name):
    # Folders of an earlier or interrupted run: staging, manifests, Beam file-sink temporaries.
    return name == fetch.PLAN_DIR or name.startswith((fetch.STAGING_PREFIX, "beam-temp-"))


# Files an earlier run of the job leaves directly in --output-dir, besides its shards.
OUTPUT_FILES = (schema.METADATA_FILE, schema.REJECTED_FILE, fetch.FAILED_REJECTS_FILE)


def our_outputs(files, output_dir=""):
    """The files among ``files`` (below ``output_dir``) that an earlier run of this job wrote."""
    ours = []
    for path in files:
        relative = path[len(output_dir) :] if output_dir and path.startswith(output_dir) else path
        posix = "/" + relative.replace("\\", "/").lstrip("/")
        name = posix.rsplit("/", 1)[-1]
        shard = name.endswith(schema.SHARD_SUFFIX) and name.split("-", 1)[0] in schema.SPLITS
        working = name == fetch.COUNTS_FILE or ".tfrecord.tmp-" in name
        working = working or any(_is_working_folder(part) for part in posix.split("/")[:-1])
        if shard or working or name in OUTPUT_FILES:
            ours.append(path)
    return ours


def _failure_leftover(path, output_dir):
    """True for the dead letters a failed run kept (:data:`~preprocessing.fetch.FAILED_REJECTS_FILE`)."""
    relative = path[len(output_dir) :] if path.startswith(output_dir) else path
    return relative.replace("\\", "/").strip("/") == fetch.FAILED_REJECTS_FILE


def check_output_dir(output_dir, overwrite):
    """Refuses a non-empty output folder unless ``overwrite``; creates and removes nothing.

    The dead letters a failed run kept (``rejected.failed.jsonl``, see
    :meth:`Staging.keep_rejects`) do not count as content: a failed run never
    blocks its own retry, which replaces them. A killed run's staging folder
    still counts: nothing tells what else that run's user put there.

    Returns:
        The files of an earlier run in it (see :func:`our_outputs`).

    Raises:
        preprocessing.fetch.SourceError: When the folder is not empty and
            ``overwrite`` is false, or cannot be listed.
    """
    fetch.check_remote(output_dir, "--output-dir")
    try:
        existing = fetch.list_tree(output_dir)
    except OSError as error:
        raise fetch.SourceError(f"cannot list --output-dir {output_dir}: {error}") from None
    content = [path for path in existing if not _failure_leftover(path, output_dir)]
    if content and not overwrite:
        raise fetch.SourceError(
            f"--output-dir {output_dir} is not empty ({len(existing)} files); pass --overwrite to replace it"
        )
    return our_outputs(existing, output_dir)


def _remove_working_folders(output_dir, keep):
    # Deleting files leaves their local folders behind; gs:// has no folders.
    if not fetch.is_local(output_dir) or not os.path.isdir(output_dir):
        return
    for entry in os.scandir(output_dir):
        if _is_working_folder(entry.name) and entry.is_dir(follow_symlinks=False) and entry.path != keep:
            shutil.rmtree(entry.path, ignore_errors=True)


def prepare_output_dir(output_dir, overwrite, keep=None):
    """Refuses a non-empty output folder unless ``overwrite``; then removes earlier outputs.

    Creates nothing: the folder appears with the job's first file.

    ``metadata.json`` goes first, so an interrupted clean-up never leaves a
    metadata file that points at missing shards.

    Args:
        output_dir: The ``--output-dir``.
        overwrite: Whether a non-empty folder may be cleaned.
        keep: A folder inside ``output_dir`` left alone (the running job's staging folder).

    Returns:
        The number of files removed.

    Raises:
        preprocessing.fetch.SourceError: When the folder is not empty and ``overwrite`` is false.
    """
    stale = check_output_dir(output_dir, overwrite)
    if keep:
        inside = fetch.join(keep, "")
        stale = [p for p in stale if not p.startswith(inside)]
    metadata = [p for p in stale if p.endswith(schema.METADATA_FILE)]
    fetch.delete(metadata)
    fetch.delete([p for p in stale if p not in metadata])
    _remove_working_folders(output_dir, keep)
    return len(stale)


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
        removed = prepare_output_dir(self.output_dir, overwrite=True, keep=self.path)
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
