"""The three layouts of ``--raw-dir``: which one a source has, and what the folder and manifest layouts hold.

- ``tiny-imagenet``: ``wnids.txt`` (or ``val/val_annotations.txt``) at the
  root or one folder down (:func:`preprocessing.plan.make_plan` reads it).
- ``folders``: ``ROOT/<class>/...`` with image files at any depth below the
  class folder, optionally under top-level ``train/``, ``val/`` (``valid/``,
  ``validation/``) and ``test/`` folders, as Keras' ``image_dataset_from_directory``
  and timm's ImageFolder read it (:func:`list_folders`).
- ``manifest``: a ``.csv`` or ``.jsonl`` file (:mod:`preprocessing.manifest`;
  :func:`list_manifest` checks that its files exist).

Both of the latter give :class:`Listing`: one :class:`Entry` per image to
convert, and every other input as a dead letter. Hidden and system files
(names starting with ``.``, ``Thumbs.db``, ``desktop.ini``, anything under
``__MACOSX/``) are not inputs: they are counted as skipped, never read.
"""

import collections
import concurrent.futures
import os

from contracts import storage
from preprocessing import fetch, manifest, sources, textfiles

TINY_IMAGENET, FOLDERS, MANIFEST = "tiny-imagenet", "folders", "manifest"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
NOT_AN_IMAGE = f"not an image extension ({', '.join(IMAGE_EXTENSIONS)}, any letter case)"
NOT_IN_A_CLASS = "not inside a class folder"
OUTSIDE_SPLITS = "outside the train/, val/ and test/ folders"
# Top-level split folders, matched case-insensitively; train/ is the pool valid and test may be carved from.
SPLIT_FOLDERS = {"train": "train", "val": "valid", "valid": "valid", "validation": "valid", "test": "test"}
SYSTEM_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
NONE_OF_THEM = (
    "is none of the three layouts: tiny-imagenet-200 (wnids.txt), a class-per-folder tree "
    "(ROOT/<class>/*.jpg, optionally under train/, val/, test/) or a .csv/.jsonl manifest"
)
NOT_A_FILE = "not a regular file (a folder, device, FIFO or socket)"
LISTING_THREADS = 16
# Files that make a folder a tiny-imagenet-200 source for --layout auto, at its root or one level down.
TINY_IMAGENET_MARKERS = ("wnids.txt", "val/val_annotations.txt")

Entry = collections.namedtuple("Entry", ["path", "label", "split", "word", "box"])
Entry.__doc__ = """One image to convert.

Attributes:
    path: As the item stores it: relative to the listing's root, or as the manifest gives it.
    label: The class name.
    split: ``train``, ``valid`` or ``test`` as the source gives it (kept), or
        ``None``: the job carves it (:mod:`preprocessing.splits`); files in a
        ``train/`` folder are ``None``, the pool valid and test are carved from.
    word: What the source called its split (``train``, ``val``, ``TEST``, ...; ``""`` when nothing).
    box: ``(xmin, ymin, xmax, ymax)`` in the source image, or ``None``.
"""

Listing = collections.namedtuple(
    "Listing", ["root", "entries", "rejected", "found", "missing", "skipped", "rejected_labels"]
)
Listing.__doc__ = """What a folder tree or manifest holds.

Attributes:
    root: What :class:`Entry` paths are relative to (the tree, or the manifest's folder).
    entries: :class:`Entry` s.
    rejected: :class:`preprocessing.sources.Rejected` inputs.
    found: Inputs: files listed (folders) or data rows (manifest); ``len(entries) + len(rejected)``.
    missing: How many of ``found`` are manifest rows without a file.
    skipped: Hidden and system files, not inputs.
    rejected_labels: ``{path: (class name, split or None)}`` of the rejected images whose class is
        known (an image file of a class folder, a manifest row whose file is missing or unreadable):
        their class stays in the class table, so a class that lost every image to the dead letters
        is counted with 0 images, not left out (:mod:`preprocessing.accounting`).
"""


def is_hidden(relative):
    """True for a hidden or system file, or anything inside such a folder (not an input)."""
    return any(part.startswith(".") or part.lower() in SYSTEM_NAMES for part in relative.split("/"))


def _children(folder):
    """Returns ``(file names, folder names)`` directly in ``folder``, hidden and system ones left out."""
    if fetch.is_local(folder):
        with os.scandir(folder) as entries:
            found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    else:
        found = [(path.rsplit("/", 1)[-1], False) for path in storage.list_files(folder)]
        found += [(path.rsplit("/", 1)[-1], True) for path in storage.list_folders(folder)]
    visible = [(name, is_folder) for name, is_folder in found if not is_hidden(name)]
    return [n for n, is_folder in visible if not is_folder], [n for n, is_folder in visible if is_folder]


def unwrap(folder):
    """Returns the folder a tree's images live under: ``folder``, or its only sub-folder when it wraps one.

    A zip of ``myphotos/`` holds ``myphotos/<class>/...``: a folder holding
    nothing but one folder, which holds only folders, is such a wrapper (once,
    as :func:`preprocessing.fetch.locate_root` looks one level down).
    """
    files, folders = _children(folder)
    if files or len(folders) != 1:
        return folder
    inner = fetch.join(folder, folders[0])
    inner_files, inner_folders = _children(inner)
    return inner if inner_folders and not inner_files else folder


def _tiny_imagenet_like(folder):
    """True when ``folder`` or a sub-folder holds ``wnids.txt`` or ``val/val_annotations.txt``.

    The second marker sends a tiny-imagenet-200 copy that lost its ``wnids.txt``
    to that layout's clear error, not into a class-per-folder reading of its folders.
    """

    def marked(candidate):
        return any(
            fetch.exists(fetch.join(candidate, *marker.split("/"))) for marker in TINY_IMAGENET_MARKERS
        )

    if marked(folder):
        return True
    # One or two requests per sub-folder on gs://: threads, as the listings.
    with concurrent.futures.ThreadPoolExecutor(LISTING_THREADS) as pool:
        return any(pool.map(marked, storage.list_folders(folder)))


def detect(source, layout, shown_as):
    """Returns ``(layout name, root)`` of a fetched ``--raw-dir`` (:func:`preprocessing.fetch.fetch_raw_dir`).

    Args:
        source: A local or ``gs://`` folder, or a manifest file.
        layout: ``--layout``: ``auto``, ``tiny-imagenet``, ``folders`` or ``manifest``.
        shown_as: The ``--raw-dir`` as the user gave it, for messages.

    Returns:
        The root is the manifest file itself for ``manifest``.

    Raises:
        LayoutError: When ``source`` cannot have the layout asked for.
        preprocessing.fetch.SourceError: For tiny-imagenet without one ``wnids.txt``.
    """
    if fetch.is_manifest(source):
        if layout not in ("auto", MANIFEST):
            raise sources.LayoutError(f"--layout {layout} needs a folder; --raw-dir {shown_as} is a manifest")
        return MANIFEST, source
    if layout == MANIFEST:
        raise sources.LayoutError(f"--layout manifest needs a .csv or .jsonl file, got --raw-dir {shown_as}")
    if layout == TINY_IMAGENET or (layout == "auto" and _tiny_imagenet_like(source)):
        return TINY_IMAGENET, fetch.locate_root(source, shown_as=shown_as)
    return FOLDERS, unwrap(source)


def _split_folders(tops, root):
    """``{top-level folder: split}`` when the tree has a ``train/`` folder, else ``{}``."""
    named = {top: SPLIT_FOLDERS[top.lower()] for top in tops if top.lower() in SPLIT_FOLDERS}
    if "train" not in named.values():
        return {}
    for split in set(named.values()):
        same = sorted(top for top, s in named.items() if s == split)
        if len(same) > 1:
            folders = " and ".join(f"{top}/" for top in same)
            raise sources.LayoutError(f"{root} has {folders}: which one is the {split} split?")
    return named


def _place(name, splits):
    """Returns ``(class, split, word)`` of a listed file; a ValueError says why it is not a class image."""
    parts = name.split("/")
    word = ""
    if splits:
        if len(parts) < 2 or parts[0] not in splits:
            raise ValueError(OUTSIDE_SPLITS)
        word, parts = parts[0], parts[1:]
    if len(parts) < 2:
        raise ValueError(NOT_IN_A_CLASS)
    if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
        raise ValueError(NOT_AN_IMAGE)
    split = splits.get(word)
    return parts[0], None if split in (None, "train") else split, word


def _is_name(label):
    try:
        sources.check_class_name(label, "")
    except sources.LayoutError:
        return False
    return True


def list_folders(root, auto=False):
    """Lists a class-per-folder tree: every file below ``root`` is an entry, a dead letter or skipped.

    Args:
        root: The tree (local folder or ``gs://`` prefix).
        auto: Whether ``--layout auto`` chose this layout (for the message when there is no image).

    Returns:
        A :class:`Listing`.

    Raises:
        LayoutError: When no class folder holds an image, a class name is not a name
            (:func:`preprocessing.sources.check_class_name`), or two folders are one split.
    """
    listed = fetch.list_image_folder(root, "", nested=True)
    visible = [entry for entry in listed if entry.name is None or not is_hidden(entry.name)]
    splits = _split_folders({e.name.split("/")[0] for e in visible if e.name and "/" in e.name}, root)
    entries, rejected, checked, labels = [], [], set(), {}
    for entry in visible:
        path = sources.printable(entry.name or ".")
        try:
            label, split, word = _place(entry.name or ".", splits)
            if entry.problem is not None:
                if _is_name(label):
                    labels[path] = (label, split)  # An image of this class, unreadable: still its class.
                raise ValueError(entry.problem)
        except ValueError as error:
            rejected.append(sources.Rejected(path, entry.problem or str(error)))
            continue
        if label not in checked:
            folder = f"{word}/{label}" if word else label
            sources.check_class_name(label, f"class folder {sources.printable(folder)!r} in {root}")
            checked.add(label)
        entries.append(Entry(entry.name, label, split, word, None))
    if not entries:
        message = NONE_OF_THEM if auto else "holds no image files in class folders (ROOT/<class>/*.jpg)"
        raise sources.LayoutError(f"{root} {message}")
    return Listing(root, entries, rejected, len(visible), 0, len(listed) - len(visible), labels)


def _split_path(path):
    if fetch.is_local(path):
        return os.path.split(path)
    folder, _, name = path.rpartition("/")
    return folder, name


def _folder_files(folder):
    """``{name: problem or None}`` of the files directly in ``folder``; ``{}`` when it does not exist."""
    if not fetch.is_local(folder):
        return {path.rsplit("/", 1)[-1]: None for path in storage.list_files(folder)}
    try:
        with os.scandir(folder) as entries:
            found = list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    files = {}
    for entry in found:
        try:
            # The manifest names each file explicitly: a link to a regular file is read like one.
            files[entry.name] = None if entry.is_file() else NOT_A_FILE
        except OSError as error:
            files[entry.name] = f"cannot inspect file: {error.strerror or error}"
    return files


def _file_problems(paths):
    """``{path: problem, or None when readable}`` for ``paths``; missing files are left out."""
    by_folder = {}
    for path in paths:
        folder, name = _split_path(path)
        by_folder.setdefault(folder, []).append(name)

    def check(folder):
        try:
            listed = _folder_files(folder)
        except OSError as error:
            problem = f"cannot list its folder: {str(error).splitlines()[0]}"
            return {fetch.join(folder, name): problem for name in by_folder[folder]}
        return {fetch.join(folder, n): listed[n] for n in by_folder[folder] if n in listed}

    # One listing per folder, not a request per file: round trips dominate on gs://.
    with concurrent.futures.ThreadPoolExecutor(LISTING_THREADS) as pool:
        results = list(pool.map(check, sorted(by_folder)))
    return {path: problem for result in results for path, problem in result.items()}


def _full_path(folder, path):
    full = fetch.resolve(folder, path)
    return os.path.normpath(full) if fetch.is_local(full) else full


def list_manifest(path):
    """Reads a manifest and checks its files: every data row is an entry or a dead letter.

    Args:
        path: The ``.csv`` or ``.jsonl`` file (an absolute local path or ``gs://``).

    Returns:
        A :class:`Listing` whose root is the manifest's folder.

    Raises:
        LayoutError: When the manifest is unreadable (:mod:`preprocessing.manifest`) or has no usable row.
    """
    folder, where = _split_path(path)
    parsed = manifest.parse(textfiles.read_text_input(path), where)
    rows, rejected = manifest.fold(parsed.rows, lambda row: _full_path(folder, row.path), where)
    problems = _file_problems([_full_path(folder, row.path) for row in rows])
    entries, missing, labels = [], 0, {}
    for row in rows:
        full = _full_path(folder, row.path)
        if full not in problems:
            missing += 1
            rejected.append(sources.Rejected(row.path, f"{where} line {row.line}: the file is missing"))
        elif problems[full] is not None:
            rejected.append(sources.Rejected(row.path, f"{where} line {row.line}: {problems[full]}"))
        else:
            entries.append(Entry(row.path, row.label, row.split, row.word, row.box))
            continue
        labels[row.path] = (row.label, row.split)
    rejected = parsed.rejected + rejected
    if not entries:
        # No class to convert at all: one line now, not a job that fails on its reject budget.
        first = f"; line by line, e.g. {rejected[0].reason}" if rejected else ""
        raise sources.LayoutError(f"{path}: none of its {parsed.count} rows names a usable image{first}")
    return Listing(folder, entries, rejected, parsed.count, missing, 0, labels)
