"""File access for the job: local paths, and ``gs://`` through the project's one storage layer.

Remote reads and writes (the launcher's and the workers') go through
:mod:`contracts.storage` (google-cloud-storage), the layer every other
package uses, so one set of emulator tests covers them all.

Also fetches ``--raw-dir`` (a folder, a ``.zip``, or a ``gs://``/``https://``
location of either; or a ``.csv``/``.jsonl`` manifest, local or ``gs://``) as a
folder or manifest the planner can list (archives and downloads go through
:mod:`preprocessing.archive`, which checks and caps them). The output folder
is checked and cleaned by :mod:`preprocessing.publish`.
"""

import collections
import os
import shutil
import tempfile

from contracts import storage
from preprocessing import archive, textfiles

WEB_SCHEMES = archive.WEB_SCHEMES
READ_CHUNK = textfiles.READ_CHUNK
# Working files the job keeps in --output-dir while it runs (removed at the end).
PLAN_DIR = ".plan"
COUNTS_FILE = ".counts.jsonl"
# The running job writes everything into --output-dir/.incomplete-<id>/ and
# moves it into place only when complete (preprocessing.publish).
STAGING_PREFIX = ".incomplete-"
# The dead letters of a job that failed on --max-reject-fraction: kept for the
# user, under a name no complete output uses, so an earlier output stays intact.
FAILED_REJECTS_FILE = "rejected.failed.jsonl"
# A --raw-dir with one of these endings is a manifest (preprocessing.manifest), not a folder.
MANIFEST_SUFFIXES = (".csv", ".jsonl")

# One error type for every unusable location, defined in the lowest module that raises it.
SourceError = archive.SourceError
# Kept under its old name: archives are checked and extracted by preprocessing.archive.
safe_extract = archive.safe_extract


def is_local(path):
    """True when ``path`` is a plain local path (no ``scheme://``)."""
    return "://" not in path


def join(base, *parts):
    """Joins path parts with the separator of ``base``'s file system."""
    return storage.join(base, *parts)


def resolve(root, path):
    """Returns ``path`` as a readable location: absolute and ``gs://`` paths as given, others below ``root``.

    Manifests may name files anywhere (:mod:`preprocessing.manifest`); the
    folder layouts always give paths relative to their root.
    """
    if not is_local(path) or os.path.isabs(path):
        return path
    return join(root, path)


def is_manifest(path):
    """True when ``path`` names a manifest file (by its ending, as ``--layout auto`` decides)."""
    return path.lower().endswith(MANIFEST_SUFFIXES)


def check_remote(path, flag):
    """Refuses a remote path that is not ``gs://`` (the only remote file system the job reads and writes).

    Raises:
        SourceError: For another scheme (``s3://``, ...).
    """
    if not is_local(path) and not storage.is_gcs(path) and not path.startswith(WEB_SCHEMES):
        raise SourceError(f"{flag} {path}: only local paths, gs:// and http(s):// archives are supported")


def _read_local(path):
    # Raw descriptors: half the cost of open().read() for 100k small files.
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_bytes(path):
    """Returns the content of a local or remote file."""
    if is_local(path):
        return _read_local(path)
    return storage.read_bytes(path)


def read_text(path):
    """Returns the UTF-8 text of one of the job's own files, local or remote.

    The dataset's text files are read by :func:`preprocessing.textfiles.read_text_input`, with a bound.

    Raises:
        SourceError: When the file is not UTF-8 text.
    """
    return textfiles.decode_utf8(path, read_bytes(path))


def exists(path):
    """True when the file exists."""
    return storage.exists(path)


Listed = collections.namedtuple("Listed", ["name", "problem"])
Listed.__doc__ = """One entry found under an image folder (:func:`list_image_folder`).

Attributes:
    name: Path relative to the image folder, as the file system names it (a
        ``str`` that may hold surrogate escapes when the name is not UTF-8);
        ``None`` for the image folder itself when it is not listed.
    problem: Why the job must not read the entry, or ``None`` when it may.
"""

NESTED = "inside a sub-folder of the image folder (only files directly in it are read)"
OUTSIDE = "symbolic link that resolves outside the raw folder (not followed)"
OUTSIDE_FOLDER = "folder resolves outside the raw folder through a symbolic link (not listed)"


def list_class_folders(root):
    """Returns the sorted names of the sub-folders of ``root/train`` (links to folders included).

    Every one is listed, named in ``wnids.txt`` or not, so that images in a
    folder of an unknown class are found (and rejected), never skipped.
    """
    train = join(root, "train")
    if not is_local(train):
        return sorted(path.rsplit("/", 1)[-1] for path in storage.list_folders(train))
    if not os.path.isdir(train):
        return []
    with os.scandir(train) as entries:
        # Links to folders count: list_image_folder refuses those that leave the raw folder.
        return sorted(entry.name for entry in entries if entry.is_dir())


def _inside(path, real_root):
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _entry_problem(entry, real_root):
    # The file type comes from the directory listing: a stat per file would add
    # about half a second per 100k files. Sizes are capped where files are read.
    try:
        if entry.is_symlink():
            # A link inside the raw folder to a regular file inside it is read like
            # the file; every other link is refused without opening its target.
            if not _inside(entry.path, real_root):
                return OUTSIDE
            if not os.path.isfile(entry.path):
                return "symbolic link to something other than a regular file"
        elif not entry.is_file(follow_symlinks=False):
            # A FIFO or device would block or never end when read.
            return "not a regular file (device, FIFO or socket)"
    except OSError as error:
        return f"cannot inspect file: {error.strerror or error}"
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    return None


def _scan(folder):
    with os.scandir(folder) as iterator:
        return list(iterator)


def _walk_local(folder, real_root, nested):
    found = []
    # An explicit stack, not recursion: a hostile tree may nest deeper than Python's recursion limit.
    pending = []
    for entry in _scan(folder):  # The folder itself unlistable: exit 2, not one bad file.
        # The common case, a plain file with a UTF-8 name, costs no system call.
        if entry.is_file(follow_symlinks=False) and entry.name.isascii():
            found.append(Listed(entry.name, None))
        else:
            pending.append((entry, ""))
    while pending:
        entry, prefix = pending.pop()
        name = prefix + entry.name
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_folder = False
        if not is_folder:
            problem = _entry_problem(entry, real_root)
            found.append(Listed(name, problem or (NESTED if prefix and not nested else None)))
            continue
        try:
            pending.extend((child, f"{name}/") for child in _scan(entry.path))
        except OSError as error:
            found.append(Listed(name, f"cannot list folder: {error.strerror or error}"))
    return found


def list_image_folder(root, relative, nested=False):
    """Lists every file below an image folder, and what (if anything) forbids reading it.

    The folder is walked recursively without following symbolic links, so each
    file, link or special file below it is found exactly once. Refused (with
    the reason in :attr:`Listed.problem`): links that resolve outside the raw
    folder ``root`` or to anything but a regular file (links to folders are not
    followed), special files, files in sub-folders unless ``nested``, names
    that are not UTF-8.
    When the folder itself resolves outside ``root`` it is not listed: one
    entry with ``name=None`` stands for it. ``gs://`` has no links or
    non-UTF-8 names; there only sub-folders are refused.

    Args:
        root: The dataset root (local folder or ``gs://`` prefix).
        relative: The image folder, relative to ``root`` (``train/<wnid>/images``, ...);
            empty for ``root`` itself.
        nested: Whether files in sub-folders may be read (the class-per-folder layout).

    Returns:
        A list of :class:`Listed`, sorted by name; empty when the folder does not exist.
    """
    folder = join(root, relative) if relative else root
    if not is_local(folder):
        prefix = f"{folder.rstrip('/')}/"
        names = (path[len(prefix) :] for path in storage.list_files(folder, recursive=True))
        return sorted(Listed(name, NESTED if "/" in name and not nested else None) for name in names)
    real_root = os.path.realpath(root)
    if not os.path.isdir(folder):
        return []
    if not _inside(folder, real_root):
        return [Listed(None, OUTSIDE_FOLDER)]
    return sorted(_walk_local(folder, real_root, nested))


def list_tree(folder):
    """Returns every file below ``folder`` (recursively) as full paths."""
    return storage.list_files(folder, recursive=True)


def delete(paths):
    """Deletes files (local or remote); missing files are ignored."""
    storage.delete(paths)


def write_bytes(path, data):
    """Writes a whole file; a local file appears atomically (written aside, then renamed)."""
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    storage.write_bytes(path, data)


def upload(local_path, path):
    """Copies a local file to ``path`` (local or remote), atomically for local targets."""
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shutil.move(local_path, path)
        return
    storage.upload_file(local_path, path)


def _children_with_wnids(folder):
    return [path for path in storage.list_folders(folder) if exists(join(path, "wnids.txt"))]


def locate_root(folder, shown_as=None):
    """Returns the dataset root: ``folder`` or its one sub-folder that holds ``wnids.txt``.

    Raises:
        SourceError: When no (or more than one) candidate holds ``wnids.txt``.
    """
    shown_as = shown_as or folder
    folder = folder.rstrip("/") if not is_local(folder) else folder
    if exists(join(folder, "wnids.txt")):
        return folder
    candidates = _children_with_wnids(folder)
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise SourceError(f"{shown_as} holds several datasets (wnids.txt in {len(candidates)} folders)")
    raise SourceError(f"wnids.txt not found in {shown_as} or its sub-folders: not a tiny-imagenet-200 folder")


def fetch_raw_dir(src, work_dir, limits=None):
    """Returns what any accepted ``--raw-dir`` names, as a folder or manifest the planner can list.

    Args:
        src: A folder, a ``.zip``, or a ``gs://``/``https://`` location of
            either; or a ``.csv``/``.jsonl`` manifest, local or ``gs://``.
        work_dir: A local scratch folder for downloads and extraction.
        limits: The :class:`preprocessing.archive.Limits` of archives and
            downloads (the defaults when ``None``).

    Returns:
        The extracted folder of an archive, an absolute local manifest path, or ``src``.

    Raises:
        SourceError: When the source is missing, unsafe, too large, slow, or has
            another checksum than ``limits.sha256``.
    """
    limits = limits or archive.Limits()
    check_remote(src, "--raw-dir")
    if src.lower().endswith(".zip"):
        return archive.fetch_archive(src, work_dir, limits)
    if limits.sha256:
        raise SourceError(f"--raw-sha256 verifies an archive, but --raw-dir {src} is not a .zip")
    if src.startswith(WEB_SCHEMES):
        raise SourceError(f"--raw-dir {src}: an http(s) source must be a .zip archive")
    if is_manifest(src):
        if not exists(src):
            raise SourceError(f"--raw-dir {src}: no such manifest file")
        if is_local(src):
            textfiles.check_text_input(src)  # A FIFO or device would block or never end: refused now, unread.
        return os.path.abspath(src) if is_local(src) else src
    if is_local(src) and not os.path.isdir(src):
        raise SourceError(f"--raw-dir {src} does not exist or is not a folder")
    return src if is_local(src) else src.rstrip("/")


def resolve_raw_dir(src, work_dir, limits=None):
    """Returns the folder holding ``wnids.txt`` for a tiny-imagenet-200 ``--raw-dir``.

    Args:
        src, work_dir, limits: As for :func:`fetch_raw_dir`.

    Raises:
        SourceError: As :func:`fetch_raw_dir`, or when no folder holds ``wnids.txt``.
    """
    return locate_root(fetch_raw_dir(src, work_dir, limits), shown_as=src)


def make_work_dir():
    """Returns a fresh local scratch folder (the caller removes it)."""
    return tempfile.mkdtemp(prefix="tiny-imagenet-preprocess-")
