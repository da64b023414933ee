"""Uploads a local dataset folder (raw images or TFRecords) to ``gs://bucket/prefix``.

Files already in the bucket with the same CRC32C (or, where an object has no
CRC32C, MD5) are skipped, so re-running after an interruption or a partial
change uploads only what differs. Large files use resumable uploads in
chunks. With ``STORAGE_EMULATOR_HOST`` set the client talks to the emulator
with anonymous credentials.
"""

import dataclasses
import os
import shutil

from contracts import storage, voice


@dataclasses.dataclass
class StageReport:
    """What one staging run did.

    Attributes:
        uploaded: object names uploaded.
        skipped: object names already present with the same checksum.
        bytes_uploaded: total size of the uploaded files.
    """

    uploaded: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    bytes_uploaded: int = 0


def local_files(src):
    """Returns ``(relative posix path, absolute path)`` of every file under ``src``, sorted."""
    found = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            found.append((os.path.relpath(path, src).replace(os.sep, "/"), path))
    return found


def _same(blob, checksums):
    crc32c, md5 = checksums
    if blob.crc32c:
        return blob.crc32c == crc32c
    return blob.md5_hash is not None and blob.md5_hash == md5


def _upload(blob, path, size, spec):
    if size < spec.resumable_threshold:
        blob.upload_from_filename(path, checksum="crc32c")
        return
    # A resumable session sends the file in chunks and survives dropped
    # connections on multi-gigabyte shards (the client's own switch is 8 MiB).
    with open(path, "rb") as source, blob.open("wb", chunk_size=spec.chunk_size, checksum="crc32c") as sink:
        shutil.copyfileobj(source, sink, spec.chunk_size)


def stage(spec, client=None, log=None):
    """Uploads ``spec.src`` to ``spec.dest``, skipping unchanged files.

    Args:
        spec: a :class:`deploy.config.StageJob`.
        client: a ``google.cloud.storage.Client``; made by :func:`contracts.storage.gcs_client` when None.
        log: called with one progress line per file and a summary (default: the
            ``submit`` command's voice, :mod:`contracts.voice`).

    Returns:
        A :class:`StageReport`.
    """
    log = log or voice.Voice("submit").say
    client = client or storage.gcs_client(spec.project)
    bucket_name, prefix = storage.split_gcs(spec.dest)
    bucket = client.bucket(bucket_name)
    remote = {
        blob.name: blob for blob in client.list_blobs(bucket_name, prefix=prefix + "/" if prefix else None)
    }
    files = local_files(spec.src)
    total_bytes = sum(os.path.getsize(path) for _, path in files)
    report = StageReport()
    for number, (relative, path) in enumerate(files, start=1):
        name = f"{prefix}/{relative}" if prefix else relative
        checksums = storage.file_checksums(path)
        existing = remote.get(name)
        if existing is not None and _same(existing, checksums):
            report.skipped.append(name)
            log(f"[{number}/{len(files)}] skip   gs://{bucket_name}/{name} (unchanged)")
            continue
        size = os.path.getsize(path)
        _upload(bucket.blob(name), path, size, spec)
        report.uploaded.append(name)
        report.bytes_uploaded += size
        log(
            f"[{number}/{len(files)}] upload gs://{bucket_name}/{name} ({size} bytes, "
            f"{report.bytes_uploaded}/{total_bytes} bytes so far)"
        )
    log(f"staged {spec.src} -> {spec.dest}: {len(report.uploaded)} uploaded, {len(report.skipped)} unchanged")
    return report
