"""CSV and JSONL manifests (preprocessing.manifest): rows, dead letters naming their line, the header.

Any text either parses, with every data row ending as one row or one dead
letter, or raises :class:`preprocessing.sources.LayoutError` naming the file
(hypothesis); well-formed rows round-trip in both formats and both split vocabularies.
"""

import csv
import io
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preprocessing import manifest, sources

PROPERTY = settings(max_examples=300, deadline=None)
HEADER = "path,label,split,xmin,ymin,xmax,ymax\n"
PIECES = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        [",", "\n", "\r\n", '"', " ", "0", "12", "-3", "a.jpg", "TEST", "valid", "{", "}", ":", "\x00"]
    ),
    st.sampled_from(['"path"', '"label"', '"split"', '"xmin"', "null", "[]", "true", "1e999"]),
)
TEXT = st.lists(PIECES, max_size=40).map("".join)
NAMED = re.compile(r"^m\.(csv|jsonl)( line \d+)?: ")


def _accounted(parsed):
    assert len(parsed.rows) + len(parsed.rejected) == parsed.count
    for rejected in parsed.rejected:
        assert NAMED.match(rejected.reason), rejected.reason
    for row in parsed.rows:
        assert row.path and row.label.strip() and row.split in (None, "train", "valid", "test")


@PROPERTY
@given(st.one_of(TEXT, TEXT.map(lambda text: HEADER + text)))
def test_csv_parses_or_fails_cleanly(text):
    try:
        parsed = manifest.parse_csv(text, "m.csv")
    except sources.LayoutError as error:
        assert NAMED.match(str(error)), str(error)
        return
    _accounted(parsed)


@PROPERTY
@given(TEXT)
def test_jsonl_rows_parse_or_are_dead_letters(text):
    _accounted(manifest.parse_jsonl(text, "m.jsonl"))


ROW = st.fixed_dictionaries(
    {
        # Surrounding spaces are dropped (a spreadsheet's "a.jpg, cat"): names start and end with a letter.
        "path": st.from_regex(r"[a-zé][a-z0-9 _é]{0,7}(/[a-z0-9_]{1,6}){0,2}\.(jpg|PNG)", fullmatch=True),
        "label": st.text(min_size=1, max_size=10).filter(
            lambda name: name.strip() == name and name.strip() and name.isprintable()
        ),
        "split": st.sampled_from(
            ["", "train", "Valid", "TEST", "TRAINING", "validation", "Test", "unassigned"]
        ),
        "box": st.one_of(
            st.none(), st.tuples(*[st.integers(0, 500)] * 2).map(lambda p: (*p, p[0] + 3, p[1] + 5))
        ),
    }
)
CANONICAL = {"": None, "unassigned": None, "train": "train", "training": "train", "valid": "valid"}
CANONICAL |= {"validation": "valid", "test": "test"}


def _csv(rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "split", "xmin", "ymin", "xmax", "ymax"])
    for row in rows:
        writer.writerow([row["path"], row["label"], row["split"], *(row["box"] or [""] * 4)])
    return buffer.getvalue()


def _jsonl(rows):
    lines = []
    for row in rows:
        values = {"path": row["path"], "label": row["label"], "split": row["split"]}
        values |= dict(zip(manifest.BOX_COLUMNS, row["box"], strict=True)) if row["box"] else {}
        lines.append(json.dumps(values, ensure_ascii=False))
    return "\n".join(lines) + "\n"


@settings(max_examples=100, deadline=None)
@given(st.lists(ROW, max_size=12))
def test_well_formed_rows_round_trip_in_both_formats(rows):
    expected = [
        (r["path"], r["label"], CANONICAL[r["split"].lower()], r["split"], r["box"] and tuple(r["box"]))
        for r in rows
    ]
    for parsed in (manifest.parse_csv(_csv(rows), "m.csv"), manifest.parse_jsonl(_jsonl(rows), "m.jsonl")):
        assert parsed.rejected == [] and parsed.count == len(rows)
        assert [(r.path, r.label, r.split, r.word, r.box) for r in parsed.rows] == expected


def test_bad_rows_are_dead_letters_naming_their_line():
    text = (
        "\ufeffPath, LABEL ,split,xmin,ymin,xmax,ymax\n"  # A spreadsheet's byte-order mark, any case.
        "a.jpg,cat,TRAINING,1,2,3,4\n"
        ",dog,,,,,\n"
        "b.jpg,  ,,,,,\n"
        "c.jpg,cat,holdout,,,,\n"
        "d.jpg,cat,,1,2,,\n"
        "e.jpg,cat,,1,2,x,4\n"
        "f.jpg,cat,,9,2,3,4\n"
        "g.jpg,cat\n"
        "\n"
        '"h, with comma.jpg","red\nfox",valid,,,,\n'
        "i.jpg,bad\tname,,,,,\n"
    )
    parsed = manifest.parse_csv(text, "m.csv")
    assert parsed.count == 10
    assert [(r.line, r.path, r.label, r.split, r.word, r.box) for r in parsed.rows] == [
        (2, "a.jpg", "cat", "train", "TRAINING", (1, 2, 3, 4))
    ]
    reasons = {r.path: r.reason for r in parsed.rejected}
    assert reasons["m.csv line 3"] == "m.csv line 3: no path"
    assert reasons["b.jpg"] == "m.csv line 4: no label"
    assert reasons["c.jpg"].startswith("m.csv line 5: split 'holdout' is not one of train, valid, test")
    assert reasons["d.jpg"] == "m.csv line 6: a box needs all of xmin, ymin, xmax, ymax, or none of them"
    assert reasons["e.jpg"] == "m.csv line 7: box coordinate 'x' is not a non-negative integer"
    assert reasons["f.jpg"] == "m.csv line 8: box (9, 2, 3, 4) has xmin > xmax or ymin > ymax"
    assert reasons["m.csv line 9"].startswith("m.csv line 9: expected 7 fields")
    # A quoted field may span lines: the row is named by its first line, and later rows keep their numbers.
    assert reasons["h, with comma.jpg"].startswith("m.csv line 11: class name 'red\\nfox' holds control")
    assert (
        reasons["i.jpg"].startswith("m.csv line 13: class name") and "control characters" in reasons["i.jpg"]
    )


def test_labels_keep_spaces_and_unicode_and_paths_are_normalised():
    text = "path,label\n./photos//x.jpg, Mañana café ☕ \n/abs/y.PNG,42\ngs://bucket/z.jpg,a/b\n"
    rows = manifest.parse_csv(text, "m.csv").rows
    assert [(r.path, r.label, r.split, r.word, r.box) for r in rows] == [
        ("photos/x.jpg", "Mañana café ☕", None, "", None),
        ("/abs/y.PNG", "42", None, "", None),
        ("gs://bucket/z.jpg", "a/b", None, "", None),
    ]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("path,label,spilt\n", "unknown column 'spilt'"),
        ("path,split\n", "the header has no 'label' column"),
        ("path,label,xmin,ymin\n", "not every box column"),
        ("path,label,Label\n", "column 'label' appears twice"),
    ],
)
def test_a_bad_header_refuses_the_file(header, message):
    with pytest.raises(sources.LayoutError, match=rf"^m\.csv line 1: .*{re.escape(message)}"):
        manifest.parse_csv(header + "a.jpg,cat,x\n", "m.csv")
    with pytest.raises(sources.LayoutError, match=r"^m\.csv: no header row"):
        manifest.parse_csv("\n \n", "m.csv")


def test_jsonl_lines_that_are_not_rows_are_dead_letters():
    text = "\n".join(
        [
            '{"path": "a.jpg", "label": 3, "split": "VALIDATION", '
            '"xmin": 0, "ymin": 0, "xmax": 5, "ymax": 5}',
            "[1, 2]",
            "{not json",
            '{"path": "b.jpg", "label": "cat", "ml_use": "test"}',
            '{"path": "c.jpg", "label": true}',
            '{"path": "d.jpg", "label": "cat", "xmin": 1.5, "ymin": 0, "xmax": 5, "ymax": 5}',
            "[" * 100000,
        ]
    )
    parsed = manifest.parse_jsonl(text, "m.jsonl")
    assert [(r.path, r.label, r.split, r.box) for r in parsed.rows] == [("a.jpg", "3", "valid", (0, 0, 5, 5))]
    reasons = [r.reason for r in parsed.rejected]
    assert reasons[0] == "m.jsonl line 2: not a JSON object but a list"
    assert reasons[1].startswith("m.jsonl line 3: not a JSON object: JSONDecodeError")
    assert reasons[2].startswith("m.jsonl line 4: unknown key 'ml_use'")
    assert reasons[3] == "m.jsonl line 5: no label"
    assert reasons[4] == "m.jsonl line 6: box coordinate 1.5 is not a non-negative integer"
    assert reasons[5].startswith("m.jsonl line 7: not a JSON object")
    assert parsed.count == 7


def test_fold_keeps_one_row_per_image_and_rejects_disagreements():
    text = "path,label,split\na.jpg,cat,train\nA.jpg,cat,\na.jpg,cat,TRAINING\nb.jpg,cat,\nb.jpg,dog,\n"
    parsed = manifest.parse_csv(text, "m.csv")
    kept, rejected = manifest.fold(parsed.rows, lambda row: row.path, "m.csv")
    assert [(r.line, r.path) for r in kept] == [(2, "a.jpg"), (3, "A.jpg")]
    assert [(r.path, r.reason) for r in rejected] == [
        ("a.jpg", "m.csv line 4: repeats line 2 (converted once)"),
        ("b.jpg", "m.csv line 5: lines 5 and 6 disagree about this image (label 'cat' vs 'dog')"),
        ("b.jpg", "m.csv line 6: lines 5 and 6 disagree about this image (label 'cat' vs 'dog')"),
    ]
    assert len(kept) + len(rejected) == parsed.count, "every row accounted for"
