"""The tiny-imagenet-200 layout as plain records: classes, splits, shards; and what every layout shares.

Nothing here touches a file system or Beam: the functions take the text of
``wnids.txt``, ``words.txt``, ``<wnid>_boxes.txt`` and ``val_annotations.txt``
and the listed file names, and return what the job has to convert. The other
layouts (:mod:`preprocessing.layouts`, :mod:`preprocessing.manifest`) use the
same records (:class:`Item`, :class:`Rejected`, :class:`ClassTable`). That keeps
the split and shard decisions deterministic (the same on every runner and
worker count) and testable without I/O.
"""

import collections
import hashlib
import json
import unicodedata

from contracts import schema

# One image to convert. ``path`` is relative to the dataset root (POSIX
# separators); ``label`` indexes :class:`ClassTable`, or is -1 when unlabelled.
Item = collections.namedtuple("Item", ["path", "source_split", "label", "box"])

# One input that cannot become a record, found while planning or converting.
Rejected = collections.namedtuple("Rejected", ["path", "reason"])

NO_LABEL = schema.NO_LABEL


class LayoutError(ValueError):
    """The raw source has no usable layout, or a text file in it is malformed; the message says why."""


class ClassTable:
    """Class indices (position in sorted ``wnids.txt``) and readable names.

    The folder and manifest layouts name a class by its folder name or label
    and store that name as its wnid too (``ClassTable(names, {})``).

    Args:
        wnids: The wnids, in any order (sorted here).
        words: Mapping wnid -> description; wnids missing from it are named by their wnid.
    """

    def __init__(self, wnids, words):
        self.wnids = sorted(set(wnids))
        if not self.wnids:
            raise LayoutError("wnids.txt lists no classes")
        self.index = {wnid: i for i, wnid in enumerate(self.wnids)}
        self.names = [words.get(wnid, wnid) for wnid in self.wnids]

    def __len__(self):
        return len(self.wnids)

    def to_metadata(self):
        """Returns ``[{index, wnid, name}]`` as metadata.json stores it."""
        pairs = zip(self.wnids, self.names, strict=True)
        return [{"index": i, "wnid": w, "name": n} for i, (w, n) in enumerate(pairs)]


# Box coordinates are pixel positions: small non-negative integers that fit an int64 feature.
MAX_COORDINATE = 2**31 - 1

Annotations = collections.namedtuple("Annotations", ["rows", "conflicts"])
Annotations.__doc__ = """The rows of a per-image file (``val_annotations.txt``, ``<wnid>_boxes.txt``).

Attributes:
    rows: ``{file name: value}`` for every name whose rows agree (identical repeats are harmless).
    conflicts: ``{file name: reason}`` for names with rows that disagree: the
        file cannot tell which row is right, so the job rejects that image.
"""


def numbered_lines(text):
    """Yields ``(line number, line)`` for every non-blank line of ``text``."""
    # Numbered as an editor numbers them (one line per "\n"); str.splitlines would
    # also split on form feeds and other separators and shift every later number.
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, line


def check_wnid(wnid, where):
    """Refuses a wnid that cannot be a folder name under ``train/``.

    A wnid becomes a path component (``train/<wnid>/images``): a slash, ``..``,
    whitespace or a control character would name another folder or none.

    Raises:
        LayoutError: Naming ``where`` (file and line).
    """
    if not wnid.isprintable() or " " in wnid or "/" in wnid or "\\" in wnid or wnid in (".", ".."):
        raise LayoutError(
            f"{where}: {wnid!r} is not a wnid (one folder name: no spaces, slashes or control characters)"
        )
    return wnid


# Characters no class name may hold: controls (tabs and newlines included), line and paragraph
# separators, and lone surrogates (a file name that is not UTF-8). Other spaces and format
# characters (the joiners inside emoji) are part of names people write.
FORBIDDEN_IN_NAMES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def check_class_name(name, where):
    """Refuses a class name that cannot name anything: empty, only whitespace, or with control characters.

    Only the tiny-imagenet layout restricts its wnids further (:func:`check_wnid`);
    a folder name or manifest label is kept as written, spaces and any script included.

    Raises:
        LayoutError: Naming ``where`` (a folder or a manifest line) and the name.
    """
    if not name.strip():
        raise LayoutError(f"{where}: class name {name!r} is empty or only whitespace")
    if any(unicodedata.category(char) in FORBIDDEN_IN_NAMES for char in name):
        raise LayoutError(
            f"{where}: class name {printable(name)!r} holds control characters or bytes that are not UTF-8"
        )
    return name


def parse_wnids(text):
    """Returns the wnids listed one per line in ``wnids.txt`` (blank lines are skipped).

    Raises:
        LayoutError: On a line that is not a usable wnid (:func:`check_wnid`).
    """
    return [check_wnid(line.strip(), f"wnids.txt line {number}") for number, line in numbered_lines(text)]


def parse_words(text, wanted):
    """Returns ``{wnid: name}`` from ``words.txt`` for the wnids in ``wanted`` only.

    Rows of other wnids are skipped unread (the official file lists all of
    ImageNet's 82,115 synsets).

    Raises:
        LayoutError: On a row of a wanted wnid without the ``wnid<TAB>name``
            form, or two rows giving one wnid different names.
    """
    wanted = set(wanted)
    words = {}
    for number, line in numbered_lines(text):
        wnid, tab, name = line.partition("\t")
        wnid, name = wnid.strip(), name.strip()
        if wnid not in wanted:
            continue
        if not tab:
            raise LayoutError(f"words.txt line {number}: expected 'wnid<TAB>name' for {wnid}")
        if words.setdefault(wnid, name) != name:
            raise LayoutError(f"words.txt line {number}: a second, different name for {wnid}")
    return words


def _box(fields, where):
    fields = [field.strip() for field in fields]
    # isdigit alone admits superscripts and other scripts' digits, which int() rejects or misreads.
    if len(fields) != 4 or not all(f.isascii() and f.isdigit() for f in fields):
        raise LayoutError(f"{where}: box {fields!r} is not four non-negative integers")
    box = tuple(int(field) for field in fields)
    if max(box) > MAX_COORDINATE:
        raise LayoutError(f"{where}: box coordinate {max(box)} is larger than {MAX_COORDINATE}")
    return box


def _name(field, where):
    name = field.strip()
    if not name:
        raise LayoutError(f"{where}: empty file name")
    return name


def _per_image(rows, file_name):
    """Folds ``(line number, name, value)`` rows into :class:`Annotations`."""
    values, first_line, conflicts = {}, {}, {}
    for number, name, value in rows:
        if name in conflicts:
            continue
        if name in values and values[name] != value:
            conflicts[name] = (
                f"{file_name} lines {first_line[name]} and {number} disagree about this image: "
                f"{values.pop(name)} vs {value}"
            )
            continue
        values.setdefault(name, value)
        first_line.setdefault(name, number)
    return Annotations(values, conflicts)


def parse_boxes(text, where="boxes.txt"):
    """Parses a ``<wnid>_boxes.txt``: ``name<TAB>xmin<TAB>ymin<TAB>xmax<TAB>ymax`` rows.

    Returns:
        :class:`Annotations` with ``rows`` ``{file name: (xmin, ymin, xmax, ymax)}``.

    Raises:
        LayoutError: On a row that does not have that form (naming the file and line).
    """

    def rows():
        for number, line in numbered_lines(text):
            at = f"{where} line {number}"
            name, *fields = line.split("\t")
            yield number, _name(name, at), _box(fields, at)

    return _per_image(rows(), where)


def parse_val_annotations(text):
    """Parses ``val_annotations.txt``: ``name, wnid, x0, y0, x1, y1`` rows, tab-separated.

    Returns:
        :class:`Annotations` with ``rows`` ``{file name: (wnid, box)}``. A wnid
        outside ``wnids.txt`` is not checked here: that image is rejected later.

    Raises:
        LayoutError: On a row that does not have that form (naming the file and line).
    """

    def rows():
        for number, line in numbered_lines(text):
            at = f"val_annotations.txt line {number}"
            fields = line.split("\t")
            if len(fields) != 6:
                raise LayoutError(f"{at}: expected 6 tab-separated fields, got {len(fields)}")
            wnid = fields[1].strip()
            if not wnid:
                raise LayoutError(f"{at}: empty wnid")
            yield number, _name(fields[0], at), (wnid, _box(fields[2:], at))

    return _per_image(rows(), "val_annotations.txt")


def printable(path):
    """Returns ``path`` with the bytes of a non-UTF-8 name shown as ``\\xNN`` escapes.

    File names are bytes on POSIX; Python hands undecodable bytes over as lone
    surrogates, which cannot be written as UTF-8 (dead letters, TFRecords).
    """
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def stable_hash(seed, name):
    """A 64-bit hash of ``(seed, name)`` that is the same in every process and on every machine."""
    # surrogatepass: a name that is not valid UTF-8 still hashes (planning rejects it anyway).
    digest = hashlib.blake2b(f"{seed}:{name}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def valid_names(names, seed, fraction):
    """Picks the file names of one class that go to the ``valid`` split.

    The files are ranked by :func:`stable_hash` and the first
    ``round(fraction * n)`` are taken, so the choice depends only on the seed
    and the names, never on order, runner or worker count.

    Returns:
        A set of names.
    """
    ranked = sorted(names, key=lambda name: (stable_hash(seed, name), name))
    return set(ranked[: round(fraction * len(ranked))])


def train_items(table, wnid, names, boxes, seed, fraction):
    """Items of one class folder under ``train/``, split into train and valid.

    Returns:
        ``{"train": [Item], "valid": [Item]}``.
    """
    label = table.index[wnid]
    to_valid = valid_names(names, seed, fraction)
    splits = {"train": [], "valid": []}
    for name in sorted(names):
        item = Item(f"train/{wnid}/images/{name}", "train", label, boxes.get(name))
        splits["valid" if name in to_valid else "train"].append(item)
    return splits


def val_items(table, names, annotations):
    """Items of ``val/`` (our ``test`` split) and the inputs rejected while planning.

    Images without a row, rows without an image, rows with a wnid outside
    ``wnids.txt`` and images whose rows disagree are rejected, never dropped;
    each name is rejected once.

    Args:
        table: The :class:`ClassTable`.
        names: File names in ``val/images``.
        annotations: :class:`Annotations` of ``val_annotations.txt``.

    Returns:
        ``(items, rejected)``.
    """
    items, rejected = [], []
    present = set(names)
    rows, conflicts = annotations
    for name in sorted(present | set(rows) | set(conflicts)):
        path = f"val/images/{name}"
        if name not in present:
            rejected.append(Rejected(path, "listed in val_annotations.txt but the file is missing"))
        elif name in conflicts:
            rejected.append(Rejected(path, conflicts[name]))
        elif name not in rows:
            rejected.append(Rejected(path, "image has no row in val_annotations.txt"))
        else:
            wnid, box = rows[name]
            if wnid not in table.index:
                rejected.append(Rejected(path, f"unknown wnid {wnid} in val_annotations.txt"))
            else:
                items.append(Item(path, "val", table.index[wnid], box))
    return items, rejected


def unlabeled_items(names):
    """Items of the unlabelled ``test/`` folder (our ``unlabeled`` split)."""
    return [Item(f"test/images/{name}", "test", NO_LABEL, None) for name in sorted(names)]


def assign_shards(items, num_shards, seed):
    """Deals the items of one split into ``num_shards`` lists.

    Items are ordered by :func:`stable_hash` of their path (so every shard
    mixes classes) and dealt round-robin, so shard sizes differ by at most one.
    Shards may be empty when there are fewer items than shards.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    ordered = sorted(items, key=lambda item: (stable_hash(seed, item.path), item.path))
    return [ordered[i::num_shards] for i in range(num_shards)]


def items_to_text(items):
    """Serializes items as one JSON array of ``[path, source_split, label, box]`` (a shard's manifest)."""
    return json.dumps([[i.path, i.source_split, i.label, i.box] for i in items], separators=(",", ":"))


def items_from_text(text):
    """Parses what :func:`items_to_text` wrote."""
    return [
        Item(path, source_split, label, tuple(box) if box is not None else None)
        for path, source_split, label, box in json.loads(text)
    ]
