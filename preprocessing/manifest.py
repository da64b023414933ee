"""CSV and JSONL manifests: one image per row, ``path, label[, split][, xmin, ymin, xmax, ymax]``.

The format Vertex AI's dataset imports use, with a header row (CSV) or one
object per line (JSONL)::

    path,label,split,xmin,ymin,xmax,ymax
    photos/cat 1.jpg,cat,TRAINING,10,12,200,180
    /data/dog.png,dog,,,,,
    gs://bucket/fox.jpg,red fox,test,,,,

    {"path": "photos/cat 1.jpg", "label": "cat", "split": "train", "xmin": 10, "ymin": 12, ...}

- ``path``: relative to the manifest's folder, absolute, or ``gs://``.
- ``label``: the class name, kept as written (surrounding spaces dropped).
- ``split``: ``train``, ``valid``, ``test`` or Vertex's ``TRAINING``,
  ``VALIDATION``, ``TEST`` in any letter case; empty (or ``UNASSIGNED``): the
  job assigns it (:mod:`preprocessing.splits`).
- box: the object's pixel box in the source image, inclusive; all four
  columns or none.

Every data row is one input: it becomes one image or one dead letter whose
reason names the manifest's line. A row without a path or label, with an
unknown split word or a malformed box, and every row of an image whose rows
disagree, is rejected; a row that repeats an earlier one exactly is rejected
as a repeat (the image is converted once). The file itself must be readable
(UTF-8, a header naming known columns): otherwise :class:`LayoutError`.

Pure: takes the text, returns rows; :mod:`preprocessing.layouts` checks the files.
"""

import collections
import csv
import io
import json
import posixpath
import unicodedata

from preprocessing import sources

LayoutError = sources.LayoutError

BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
COLUMNS = ("path", "label", "split", *BOX_COLUMNS)
REQUIRED = ("path", "label")
# Split words, matched case-insensitively: ours and Vertex AI's ML_USE values.
SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "test": "test",
    "": None,
    "unassigned": None,
}

Row = collections.namedtuple("Row", ["line", "path", "label", "split", "word", "box"])
Row.__doc__ = """One well-formed manifest row.

Attributes:
    line: The line it starts on (1-based, as an editor counts).
    path: The image's path, normalised (``a/./b.jpg`` -> ``a/b.jpg``), as the row gives it.
    label: The class name.
    split: ``train``, ``valid``, ``test``, or ``None`` when the job assigns it.
    word: The split word as written (``""`` when none).
    box: ``(xmin, ymin, xmax, ymax)`` or ``None``.
"""

Parsed = collections.namedtuple("Parsed", ["rows", "rejected", "count"])
Parsed.__doc__ = """A parsed manifest: well-formed :class:`Row` s, rejected rows, the number of data rows."""


class _BadRowError(Exception):
    """One row is unusable; the message is the dead letter's reason (without the line)."""


def _has_controls(text):
    return any(unicodedata.category(char) in sources.FORBIDDEN_IN_NAMES for char in text)


def _path(value):
    if not isinstance(value, str) or not value.strip():
        raise _BadRowError("no path")
    path = value.strip()
    if _has_controls(path):
        raise _BadRowError(f"path {sources.printable(path)!r} holds control characters")
    if "://" in path:
        return path
    return posixpath.normpath(path)


def _label(value, where):
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _BadRowError("no label")
    try:
        return sources.check_class_name(value.strip(), where)
    except LayoutError as error:
        raise _BadRowError(str(error).split(": ", 1)[-1]) from None


def _split(value):
    word = "" if value is None else value
    if not isinstance(word, str):
        raise _BadRowError(f"split {word!r} is not a word")
    word = word.strip()
    if word.lower() not in SPLIT_WORDS:
        raise _BadRowError(
            f"split {sources.printable(word)!r} is not one of train, valid, test "
            "(or TRAINING, VALIDATION, TEST; empty to let the job assign it)"
        )
    return SPLIT_WORDS[word.lower()], word


def _coordinate(value):
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise _BadRowError(f"box coordinate {value!r} is not a non-negative integer")
    if not 0 <= number <= sources.MAX_COORDINATE:
        raise _BadRowError(f"box coordinate {number} is outside [0, {sources.MAX_COORDINATE}]")
    return number


def _box(values):
    present = [values.get(c) not in (None, "") for c in BOX_COLUMNS]
    if not any(present):
        return None
    if not all(present):
        raise _BadRowError("a box needs all of xmin, ymin, xmax, ymax, or none of them")
    xmin, ymin, xmax, ymax = (_coordinate(values[c]) for c in BOX_COLUMNS)
    if xmin > xmax or ymin > ymax:
        raise _BadRowError(f"box ({xmin}, {ymin}, {xmax}, {ymax}) has xmin > xmax or ymin > ymax")
    return (xmin, ymin, xmax, ymax)


def _row(values, line, where):
    """Returns the :class:`Row` of one row's ``{column: value}``; raises :class:`_BadRowError`."""
    path = _path(values.get("path"))
    label = _label(values.get("label"), f"{where} line {line}")
    split, word = _split(values.get("split"))
    return Row(line, path, label, split, word, _box(values))


def _rejected_path(values, where, line):
    path = values.get("path") if isinstance(values, dict) else None
    if isinstance(path, str) and path.strip():
        return sources.printable(path.strip())
    return f"{where} line {line}"


class _Collector:
    """Gathers the rows of one manifest: each data row ends as a Row or a Rejected."""

    def __init__(self, where):
        self.where = where
        self.rows, self.rejected, self.count = [], [], 0

    def add(self, values, line):
        """Adds the row ``{column: value}`` that starts on ``line``."""
        try:
            row = _row(values, line, self.where)
        except _BadRowError as error:
            self.reject(str(error), line, values)
            return
        self.count += 1
        self.rows.append(row)

    def reject(self, reason, line, values=None):
        """Adds a row that cannot be used, for ``reason``."""
        self.count += 1
        path = _rejected_path(values, self.where, line)
        self.rejected.append(sources.Rejected(path, f"{self.where} line {line}: {reason}"))

    def parsed(self):
        return Parsed(self.rows, self.rejected, self.count)


def _header(fields, where, line):
    names = [field.strip().lower() for field in fields]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise LayoutError(
            f"{where} line {line}: unknown column {unknown[0]!r} in the header; columns are "
            f"{', '.join(COLUMNS)} (path and label required)"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise LayoutError(f"{where} line {line}: column {repeated[0]!r} appears twice in the header")
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise LayoutError(f"{where} line {line}: the header has no {missing[0]!r} column")
    box = [name for name in BOX_COLUMNS if name in names]
    if box and len(box) != len(BOX_COLUMNS):
        raise LayoutError(f"{where} line {line}: the header has {', '.join(box)} but not every box column")
    return names


def parse_csv(text, where="manifest.csv"):
    """Parses a CSV manifest whose first non-blank row is the header.

    Args:
        text: The file's text (a leading byte-order mark, as spreadsheets write, is ignored).
        where: The file's name, for messages.

    Returns:
        A :class:`Parsed`.

    Raises:
        LayoutError: When the header is missing or names unknown, repeated or
            incomplete columns, or the CSV cannot be read (naming the line).
    """
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    collector = _Collector(where)
    names, line = None, 1
    try:
        for fields in reader:
            start, line = line, reader.line_num + 1
            if not any(field.strip() for field in fields):
                continue
            if names is None:
                names = _header(fields, where, start)
            elif len(fields) != len(names):
                expected = f"expected {len(names)} fields ({','.join(names)}), got {len(fields)}"
                collector.reject(expected, start)
            else:
                collector.add(dict(zip(names, fields, strict=True)), start)
    except csv.Error as error:
        raise LayoutError(f"{where} line {line}: not readable as CSV: {error}") from None
    if names is None:
        raise LayoutError(f"{where}: no header row (expected columns {', '.join(COLUMNS)})")
    return collector.parsed()


def parse_jsonl(text, where="manifest.jsonl"):
    """Parses a JSONL manifest: one JSON object per non-blank line, keys as the CSV's columns.

    Returns:
        A :class:`Parsed`; a line that is not an object with known keys is a rejected row.
    """
    collector = _Collector(where)
    for number, line in sources.numbered_lines(text.removeprefix("\ufeff")):
        try:
            values = json.loads(line)
        except (ValueError, RecursionError) as error:
            collector.reject(f"not a JSON object: {type(error).__name__}: {str(error)[:200]}", number)
            continue
        if not isinstance(values, dict):
            collector.reject(f"not a JSON object but a {type(values).__name__}", number)
            continue
        unknown = sorted(key for key in values if key not in COLUMNS)
        if unknown:
            collector.reject(
                f"unknown key {sources.printable(unknown[0])!r} (keys: {', '.join(COLUMNS)})", number, values
            )
            continue
        collector.add(values, number)
    return collector.parsed()


def parse(text, where):
    """Parses a manifest by its file name's ending (``.csv`` or ``.jsonl``)."""
    return parse_jsonl(text, where) if where.lower().endswith(".jsonl") else parse_csv(text, where)


def _meaning(row):
    return (row.label, row.split, row.box)


def _difference(first, other):
    for field in ("label", "split", "box"):
        if getattr(first, field) != getattr(other, field):
            return f"{field} {getattr(first, field)!r} vs {getattr(other, field)!r}"
    return ""


def fold(rows, key, where):
    """Keeps one row per image; rejects repeats and every row of an image whose rows disagree.

    Args:
        rows: :class:`Row` s, in file order.
        key: ``key(row)``: what makes two rows the same image (its full path).
        where: The manifest's name, for the reasons.

    Returns:
        ``(kept rows, rejected)``.
    """
    groups = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    kept, rejected = [], []
    for group in groups.values():
        first = group[0]
        other = next((row for row in group if _meaning(row) != _meaning(first)), None)
        if other is not None:
            reason = (
                f"lines {first.line} and {other.line} disagree about this image "
                f"({sources.printable(_difference(first, other))})"
            )
            rejected += [sources.Rejected(r.path, f"{where} line {r.line}: {reason}") for r in group]
            continue
        kept.append(first)
        rejected += [
            sources.Rejected(r.path, f"{where} line {r.line}: repeats line {first.line} (converted once)")
            for r in group[1:]
        ]
    return kept, rejected
