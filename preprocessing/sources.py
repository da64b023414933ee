"""The tiny-imagenet-200 layout as plain records: classes, splits, shards.

Nothing here touches a file system or Beam: the functions take the text of
``wnids.txt``, ``words.txt``, ``<wnid>_boxes.txt`` and ``val_annotations.txt``
and the listed file names, and return what the job has to convert. That keeps
the split and shard decisions deterministic (the same on every runner and
worker count) and testable without I/O.
"""

import collections
import hashlib
import json

from contracts import schema

# One image to convert. ``path`` is relative to the dataset root (POSIX
# separators); ``label`` indexes :class:`ClassTable`, or is -1 when unlabelled.
Item = collections.namedtuple("Item", ["path", "source_split", "label", "box"])

# One input that cannot become a record, found while planning or converting.
Rejected = collections.namedtuple("Rejected", ["path", "reason"])

NO_LABEL = schema.NO_LABEL


class LayoutError(ValueError):
    """The raw folder does not have the tiny-imagenet-200 layout; the message says why."""


class ClassTable:
    """Class indices (position in sorted ``wnids.txt``) and readable names.

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


def parse_wnids(text):
    """Returns the wnids listed one per line in ``wnids.txt``."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_words(text, wanted):
    """Returns ``{wnid: name}`` from ``words.txt`` for the wnids in ``wanted`` only."""
    wanted = set(wanted)
    words = {}
    for line in text.splitlines():
        wnid, _, name = line.partition("\t")
        wnid = wnid.strip()
        if wnid in wanted:
            words[wnid] = name.strip()
    return words


def _box(fields, where):
    try:
        box = tuple(int(v) for v in fields)
    except ValueError:
        raise LayoutError(f"{where}: box {fields!r} is not four integers") from None
    if len(box) != 4:
        raise LayoutError(f"{where}: expected four box coordinates, got {len(box)}")
    return box


def parse_boxes(text, where="boxes.txt"):
    """Returns ``{file name: (xmin, ymin, xmax, ymax)}`` from a ``<wnid>_boxes.txt``."""
    boxes = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, *fields = line.split("\t")
        boxes[name.strip()] = _box(fields, f"{where} line {number}")
    return boxes


def parse_val_annotations(text):
    """Returns ``{file name: (wnid, box)}`` from ``val_annotations.txt``.

    Raises:
        LayoutError: On a row that is not ``name, wnid, x0, y0, x1, y1``.
    """
    rows = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 6:
            raise LayoutError(f"val_annotations.txt line {number}: expected 6 tab-separated fields")
        rows[fields[0].strip()] = (fields[1].strip(), _box(fields[2:], f"val_annotations.txt line {number}"))
    return rows


def stable_hash(seed, name):
    """A 64-bit hash of ``(seed, name)`` that is the same in every process and on every machine."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
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

    Images without a row, rows without an image and rows with a wnid outside
    ``wnids.txt`` are rejected, never dropped.

    Returns:
        ``(items, rejected)``.
    """
    items, rejected = [], []
    present = set(names)
    for name in sorted(present | set(annotations)):
        path = f"val/images/{name}"
        if name not in annotations:
            rejected.append(Rejected(path, "image has no row in val_annotations.txt"))
        elif name not in present:
            rejected.append(Rejected(path, "listed in val_annotations.txt but the file is missing"))
        else:
            wnid, box = annotations[name]
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
