"""The dataset's text files, read with a bound and without ever blocking.

``wnids.txt``, ``words.txt``, ``val_annotations.txt``, ``<wnid>_boxes.txt``
and a manifest are read whole in the launching process. Each one is checked
before it is read: a FIFO in its place would block the job for ever, and
``/dev/zero`` (or a link to it) filled 4 GB in 8 s. Only regular files of at
most :data:`MAX_TEXT_BYTES` are read (on ``gs://``: objects of at most that
size). The job's own working files (shard manifests, counts, dead letters)
are read by :func:`preprocessing.fetch.read_text`.
"""

import os
import stat

from contracts import storage
from preprocessing import archive

READ_CHUNK = 1 << 20
# Largest text input: tiny-imagenet's text files are a few MB at most (words.txt names all 82,115
# ImageNet synsets), a manifest of ImageNet's 1.28M images about 90 MB. Room for a few million rows,
# and still a bound on what the launcher holds.
MAX_TEXT_BYTES = 256 << 20
NOT_A_REGULAR_FILE = "not a regular file (a FIFO, device or folder), so the job does not read it"

SourceError = archive.SourceError


def decode_utf8(path, data):
    """Returns ``data`` as text.

    Raises:
        SourceError: When it is not UTF-8 (e.g. a corrupt ``words.txt``), naming ``path``.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SourceError(f"{path} is not UTF-8 text: {error}") from None


def _problem(mode, size, limit):
    if not stat.S_ISREG(mode):
        return NOT_A_REGULAR_FILE
    if size > limit:
        return f"{size} bytes, over the limit of {limit} bytes for a text input"
    return None


def check_text_input(path, limit=MAX_TEXT_BYTES):
    """Refuses a local text input that is not a regular file or is larger than ``limit``, unopened.

    ``os.stat`` follows links and never blocks, so a FIFO or ``/dev/zero``
    (or a link to one) is refused before anything opens it.

    Raises:
        SourceError: Naming the file and the problem.
        OSError: When the file cannot be inspected (e.g. it does not exist).
    """
    info = os.stat(path)
    problem = _problem(info.st_mode, info.st_size, limit)
    if problem:
        raise SourceError(f"{path}: {problem}")


def _read_local(path, limit):
    check_text_input(path, limit)
    # Non-blocking: should a FIFO take the file's place after the check, opening it returns at once
    # and the same check on the open descriptor refuses it; the read stops past the limit either way.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        problem = _problem(info.st_mode, info.st_size, limit)
        if problem:
            raise SourceError(f"{path}: {problem}")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, READ_CHUNK)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise SourceError(f"{path}: grew past the limit of {limit} bytes for a text input while it was read")
    return b"".join(chunks)


def _read_gcs(path, limit):
    bucket, name = storage.split_gcs(path)
    with storage.translated(path):
        blob = storage.gcs_client().bucket(bucket).get_blob(name)  # Its size, before any byte is read.
        if blob is None:
            raise FileNotFoundError(f"{path}: no such object or bucket")
        size = blob.size or 0
        problem = _problem(stat.S_IFREG, size, limit)
        if problem:
            raise SourceError(f"{path}: {problem}")
        # The range holds the read to that size should the object be replaced meanwhile.
        return blob.download_as_bytes(start=0, end=size - 1) if size else b""


def read_text_input(path, limit=MAX_TEXT_BYTES):
    """Returns the UTF-8 text of one of the dataset's text files (local or ``gs://``).

    Raises:
        SourceError: For a FIFO, device or folder in its place (links are
            followed), a file over ``limit`` bytes, or text that is not UTF-8;
            the message names the file.
        OSError: When the file cannot be read (e.g. it does not exist).
    """
    data = _read_local(path, limit) if "://" not in path else _read_gcs(path, limit)
    return decode_utf8(path, data)
