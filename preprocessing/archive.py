"""Untrusted archives and downloads: checked, capped and verified before the job reads them.

``--raw-dir`` may be a ``.zip`` on the local disk, in a bucket or on a web
server. A hostile or broken source must not fill the disk, hang the launcher
or slip another file in, so:

- every zip entry is checked before anything is written (no absolute paths,
  ``..``, links or special files); the sum of the declared sizes is capped
  (``--max-archive-bytes``) and so is each entry's compression ratio
  (:data:`MAX_RATIO`). The bytes actually written are counted again while
  extracting, because the sizes in the central directory are whatever the
  archive's maker wrote there;
- an ``http(s)://`` download is capped in size (``--max-download-bytes``: the
  announced ``Content-Length`` up front, the bytes received while reading) and
  in wall-clock time for the whole transfer (``--download-timeout``), not only
  per read;
- ``--raw-sha256`` verifies the archive, wherever it comes from.

A refused source leaves nothing behind: partial downloads and extractions are
removed before the error is raised.
"""

import dataclasses
import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import PurePosixPath

from contracts import storage

LOGGER = logging.getLogger("preprocessing")
WEB_SCHEMES = ("http://", "https://")
# The official tiny-imagenet-200.zip is 248,100,043 bytes and holds JPEGs,
# which do not compress: it expands to about as much. 4 GiB leaves room for
# larger datasets in the same layout and still stops a bomb long before a disk fills.
MAX_ARCHIVE_BYTES = 4 << 30
MAX_DOWNLOAD_BYTES = 1 << 30
DOWNLOAD_TIMEOUT_S = 3600.0
# A connection that sends nothing for this long is dropped (the total timeout,
# when shorter, wins); the total timeout is checked after every read.
READ_TIMEOUT_S = 60.0
# JPEGs barely compress and text compresses about 5:1; a zip bomb reaches
# 1000:1. Entries below RATIO_MIN_BYTES are exempt (a small empty-ish file may
# legitimately compress very well and cannot hurt).
MAX_RATIO = 100
RATIO_MIN_BYTES = 1 << 20
CHUNK = 1 << 20
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([a-z]*)\s*")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class SourceError(ValueError):
    """``--raw-dir`` or ``--output-dir`` cannot be used; the message says why.

    Defined here, the lowest module that raises it; :mod:`preprocessing.fetch`
    re-exports it, so the job catches one type.
    """


@dataclasses.dataclass(frozen=True)
class Limits:
    """What an archive or a download may cost.

    Attributes:
        max_archive_bytes: Cap on the sum of the uncompressed sizes of a zip's entries.
        max_download_bytes: Cap on the bytes of an ``http(s)://`` download.
        download_timeout_s: Wall-clock limit of a whole ``http(s)://`` download.
        sha256: Expected SHA-256 of the archive (lowercase hex), or ``None``.
    """

    max_archive_bytes: int = MAX_ARCHIVE_BYTES
    max_download_bytes: int = MAX_DOWNLOAD_BYTES
    download_timeout_s: float = DOWNLOAD_TIMEOUT_S
    sha256: str | None = None

    def __post_init__(self):
        if self.max_archive_bytes < 1:
            raise ValueError(f"--max-archive-bytes must be >= 1, got {self.max_archive_bytes}")
        if self.max_download_bytes < 1:
            raise ValueError(f"--max-download-bytes must be >= 1, got {self.max_download_bytes}")
        if not self.download_timeout_s > 0:
            raise ValueError(f"--download-timeout must be > 0 seconds, got {self.download_timeout_s}")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"--raw-sha256 must be 64 hexadecimal digits, got {self.sha256!r}")


def parse_size(text):
    """Parses a byte count: ``123``, ``300MB`` (10**6), ``4GiB`` (2**30), ``1.5g``; any case.

    Raises:
        ValueError: For anything else.
    """
    match = _SIZE.fullmatch(str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"expected a byte count such as 500MB or 4GiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def _parts(name):
    # Backslashes are separators too: archives made on Windows use them.
    return PurePosixPath(name.replace("\\", "/")).parts


def _check_member(info, target):
    name = info.filename
    mode = info.external_attr >> 16
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise SourceError(f"unsafe archive: entry {name!r} has an absolute path")
    if ".." in _parts(name):
        raise SourceError(f"unsafe archive: entry {name!r} would be written outside the target folder")
    if stat.S_ISLNK(mode):
        raise SourceError(f"unsafe archive: entry {name!r} is a symbolic link")
    # Archives made without Unix modes (or with permission bits only) carry no file type.
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise SourceError(f"unsafe archive: entry {name!r} is not a regular file or folder")
    resolved = os.path.realpath(os.path.join(target, name))
    if os.path.commonpath([resolved, os.path.realpath(target)]) != os.path.realpath(target):
        raise SourceError(f"unsafe archive: entry {name!r} would be written outside the target folder")


def _check_sizes(members, max_bytes):
    total = 0
    for info in members:
        total += info.file_size
        packed = max(info.compress_size, 1)
        if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * packed:
            raise SourceError(
                f"unsafe archive: entry {info.filename!r} expands {info.file_size // packed}:1 "
                f"({info.file_size} bytes from {info.compress_size}); more than {MAX_RATIO}:1 "
                "is refused as a likely zip bomb"
            )
    if total > max_bytes:
        raise SourceError(
            f"archive too large: it expands to {total} bytes, more than --max-archive-bytes {max_bytes}"
        )


def _copy_entry(source, sink, info, written_before, max_bytes):
    """Copies one entry, counting the bytes really written; returns the running total.

    CPython's zipfile stops at the declared size and then fails the CRC check,
    so an understated size already fails there; counting here keeps both caps
    whatever the reader does.
    """
    written = 0
    while chunk := source.read(CHUNK):
        written += len(chunk)
        if written > info.file_size:
            raise SourceError(
                f"unsafe archive: entry {info.filename!r} expands beyond its declared {info.file_size} bytes"
            )
        if written_before + written > max_bytes:
            raise SourceError(f"archive too large: it expands to more than --max-archive-bytes {max_bytes}")
        sink.write(chunk)
    return written_before + written


def safe_extract(archive, target, max_bytes=MAX_ARCHIVE_BYTES):
    """Extracts a zip archive into ``target`` after checking every entry and the sizes.

    Entries with absolute paths, ``..`` components, symbolic links or other
    special files, archives expanding beyond ``max_bytes`` and entries
    compressed more than :data:`MAX_RATIO`:1 are refused before anything is
    written; sizes are enforced again while writing.

    Raises:
        SourceError: For an unsafe, too large or unreadable archive (``target`` is then removed).
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_member(info, target)
            _check_sizes(members, max_bytes)
            try:
                total = 0
                for info in members:
                    path = os.path.join(target, *_parts(info.filename))
                    if info.is_dir():
                        os.makedirs(path, exist_ok=True)
                        continue
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with zf.open(info) as source, open(path, "wb") as sink:
                        total = _copy_entry(source, sink, info, total, max_bytes)
            except BaseException:
                _remove(target)
                raise
    # A corrupt deflate stream, a bad CRC, a truncated file, encryption, an unknown method.
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
        raise SourceError(f"{archive} is not a readable zip archive: {error}") from None


def _content_length(response):
    value = response.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def _receive(url, response, sink, limits, deadline, digest):
    cap = limits.max_download_bytes
    announced = _content_length(response)
    if announced is not None and announced > cap:
        raise SourceError(
            f"cannot download {url}: it announces {announced} bytes, more than --max-download-bytes {cap}"
        )
    received = 0
    # read1 returns what one socket read brings, so the deadline is checked even on a slow drip.
    while chunk := response.read1(CHUNK):
        received += len(chunk)
        if received > cap:
            raise SourceError(f"cannot download {url}: more than --max-download-bytes {cap} bytes")
        if time.monotonic() > deadline:
            raise SourceError(
                f"cannot download {url}: not finished after --download-timeout "
                f"{limits.download_timeout_s:g} s ({received} bytes received)"
            )
        digest.update(chunk)
        sink.write(chunk)
    if announced is not None and received != announced:
        raise SourceError(f"cannot download {url}: connection closed after {received} of {announced} bytes")
    return received


def download(url, target, limits=Limits()):
    """Downloads ``url`` into the local file ``target`` within ``limits``.

    Returns:
        The SHA-256 of the download (lowercase hex).

    Raises:
        SourceError: When the download fails or breaks a limit (``target`` is then removed).
    """
    deadline = time.monotonic() + limits.download_timeout_s
    digest = hashlib.sha256()
    per_read = min(READ_TIMEOUT_S, limits.download_timeout_s)
    try:
        with urllib.request.urlopen(url, timeout=per_read) as response, open(target, "wb") as sink:
            received = _receive(url, response, sink, limits, deadline, digest)
    except SourceError:
        _remove(target)
        raise
    except TimeoutError:
        _remove(target)
        raise SourceError(f"cannot download {url}: no data for {per_read:g} s") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        _remove(target)
        raise SourceError(f"cannot download {url}: {error}") from None
    except BaseException:
        _remove(target)
        raise
    LOGGER.info("downloaded %s: %d bytes, sha256 %s", url, received, digest.hexdigest())
    return digest.hexdigest()


def _local_copy(src, local, limits):
    """Returns ``(local path, sha256 or None)`` of the archive ``src``."""
    if src.startswith(WEB_SCHEMES):
        return local, download(src, local, limits)
    if "://" not in src:
        if not os.path.isfile(src):
            raise SourceError(f"--raw-dir {src} does not exist")
        return src, storage.file_sha256(src) if limits.sha256 else None
    try:
        storage.download_file(src, local)
    except FileNotFoundError:
        raise SourceError(f"--raw-dir {src} does not exist") from None
    return local, storage.file_sha256(local) if limits.sha256 else None


def fetch_archive(src, work_dir, limits=Limits()):
    """Copies (if remote), verifies and extracts the zip ``src`` into ``work_dir``.

    Args:
        src: A local, ``gs://`` or ``http(s)://`` zip.
        work_dir: A local scratch folder (the caller removes it).
        limits: The :class:`Limits` to enforce.

    Returns:
        The folder the archive was extracted into.

    Raises:
        SourceError: When the archive is missing, breaks a limit, has another
            SHA-256 than ``limits.sha256``, or is unsafe or unreadable.
    """
    copy = os.path.join(work_dir, "source.zip")
    try:
        local, actual = _local_copy(src, copy, limits)
        if limits.sha256 and actual != limits.sha256:
            raise SourceError(f"--raw-dir {src}: its SHA-256 is {actual}, not --raw-sha256 {limits.sha256}")
        extracted = os.path.join(work_dir, "extracted")
        safe_extract(local, extracted, limits.max_archive_bytes)
    finally:
        # The extracted copy is all the job reads; a refused one is gone already.
        _remove(copy)
    return extracted
