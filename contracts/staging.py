"""Copies a ``gs://`` data folder (metadata.json + shards) into a local cache.

TensorFlow's own ``gs://`` file system cannot be pointed at a storage
emulator and re-reads every shard each epoch, so the trainer stages the
dataset once with google-cloud-storage and reads local files. Files already in
the cache with the same size and CRC32C are not downloaded again.
"""

import concurrent.futures
import logging
import os
import tempfile

from contracts import schema, storage

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """The dataset on disk (or in the bucket) is missing, corrupt or disagrees with metadata.json.

    The message always names the offending file.
    """


def default_cache_dir(data_dir):
    """Returns the local folder a ``gs://`` data folder is staged into by default.

    ``$TINY_INCEPTION_CACHE`` overrides the root (default ``~/.cache/tiny-inception``).
    """
    root = os.environ.get("TINY_INCEPTION_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tiny-inception"
    )
    bucket, prefix = storage.split_gcs(data_dir)
    return os.path.join(root, "gcs", bucket, *filter(None, prefix.split("/")))


def _up_to_date(blob, local_path):
    if not os.path.exists(local_path) or os.path.getsize(local_path) != blob.size:
        return False
    return blob.crc32c is None or storage.file_checksums(local_path)[0] == blob.crc32c


def _download(blob, local_path):
    """Downloads ``blob`` atomically (temp file + rename); returns True when it transferred."""
    if _up_to_date(blob, local_path):
        return False
    folder = os.path.dirname(local_path)
    handle, tmp_path = tempfile.mkstemp(dir=folder, prefix=".staging-")
    os.close(handle)
    try:
        blob.download_to_filename(tmp_path)
        os.replace(tmp_path, local_path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return True


def stage_data_dir(data_dir, cache_dir=None, *, client=None, max_workers=8):
    """Makes a data folder local: ``gs://`` folders are downloaded, local paths returned unchanged.

    Downloads ``metadata.json`` and every shard it lists into ``cache_dir``,
    skipping files already there with the same size and CRC32C.

    Args:
        data_dir: A local folder or ``gs://bucket/prefix`` holding ``metadata.json``.
        cache_dir: Local target folder (default: :func:`default_cache_dir`).
        client: Optional ``google.cloud.storage.Client``.
        max_workers: Parallel shard downloads.

    Returns:
        The local folder holding ``metadata.json`` and the shards.

    Raises:
        DataError: When ``metadata.json`` or a listed shard is not in the bucket,
            or metadata.json cannot be read.
    """
    data_dir = str(data_dir)
    if not storage.is_gcs(data_dir):
        return data_dir
    bucket_name, prefix = storage.split_gcs(data_dir)
    cache_dir = cache_dir or default_cache_dir(data_dir)
    os.makedirs(cache_dir, exist_ok=True)
    bucket = (client or storage.gcs_client()).bucket(bucket_name)

    def remote(name):
        return f"{prefix}/{name}" if prefix else name

    def blob_or_error(name):
        blob = bucket.get_blob(remote(name))
        if blob is None:
            raise DataError(f"{storage.GCS_SCHEME}{bucket_name}/{remote(name)}: file not found in the bucket")
        return blob

    metadata_path = os.path.join(cache_dir, schema.METADATA_FILE)
    _download(blob_or_error(schema.METADATA_FILE), metadata_path)
    with open(metadata_path) as f:
        text = f.read()
    try:
        metadata = schema.read_metadata_text(text)
    except ValueError as error:
        raise DataError(f"{data_dir}/{schema.METADATA_FILE}: {error}") from error
    names = [name for split in metadata.get("splits", {}).values() for name in split.get("shards", [])]
    blobs = [(blob_or_error(name), os.path.join(cache_dir, name)) for name in names]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
        transferred = sum(pool.map(lambda pair: _download(*pair), blobs))
    logger.info(
        "Staged %s into %s: %d of %d shards downloaded, the rest already cached.",
        data_dir,
        cache_dir,
        transferred,
        len(blobs),
    )
    return cache_dir
