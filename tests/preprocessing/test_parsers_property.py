"""Property-based tests (hypothesis) of the parsers of the dataset's text files.

Any text fed to the parsers of ``wnids.txt``, ``words.txt``,
``val_annotations.txt`` and ``<wnid>_boxes.txt`` either parses or raises
:class:`preprocessing.sources.LayoutError` naming the file and line; nothing
else escapes (the job turns a LayoutError into one line and exit code 2).
Well-formed files round-trip.
"""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from preprocessing import sources

# Text biased towards the parsers' separators, so that rows with the right
# number of fields (and hence the deeper checks) come up often.
PIECES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["\t", "\n", "\r\n", " ", "0", "12", "-3", "n01443537", "a.JPEG", "..", "/", "\x00"]),
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),
)
TEXT = st.one_of(st.text(), st.lists(PIECES, max_size=40).map("".join))
LINE_NAMED = re.compile(r"^(wnids\.txt|words\.txt|val_annotations\.txt|n1_boxes\.txt) lines? \d+")
PROPERTY = settings(max_examples=300, deadline=None)


def _clean_failure(call):
    """Runs ``call``; a LayoutError must name its file and line, anything else fails the test."""
    try:
        return call()
    except sources.LayoutError as error:
        assert LINE_NAMED.match(str(error)), str(error)
        return None


@PROPERTY
@given(TEXT)
def test_wnids_parse_or_fail_cleanly(text):
    wnids = _clean_failure(lambda: sources.parse_wnids(text))
    for wnid in wnids or []:
        # Every wnid is one safe path component.
        assert wnid and wnid.isprintable() and not set(wnid) & {"/", "\\", " "} and wnid not in (".", "..")


@PROPERTY
@given(TEXT, st.lists(st.sampled_from(["n01443537", "0", "a.JPEG", "n1"]), max_size=3))
def test_words_parse_or_fail_cleanly(text, wanted):
    words = _clean_failure(lambda: sources.parse_words(text, wanted))
    assert words is None or set(words) <= set(wanted)


@PROPERTY
@given(TEXT)
def test_boxes_parse_or_fail_cleanly(text):
    parsed = _clean_failure(lambda: sources.parse_boxes(text, "n1_boxes.txt"))
    if parsed is not None:
        assert not set(parsed.rows) & set(parsed.conflicts), "a name is either usable or rejected"
        for box in parsed.rows.values():
            assert len(box) == 4 and all(0 <= v <= sources.MAX_COORDINATE for v in box)


@PROPERTY
@given(TEXT)
def test_val_annotations_parse_or_fail_cleanly(text):
    parsed = _clean_failure(lambda: sources.parse_val_annotations(text))
    if parsed is not None:
        assert not set(parsed.rows) & set(parsed.conflicts)
        for wnid, box in parsed.rows.values():
            assert wnid and len(box) == 4


NAMES = st.text(st.characters(blacklist_characters="\t\n", blacklist_categories=["Cs"]), min_size=1).filter(
    lambda name: name.strip() == name and name
)
BOXES = st.tuples(*[st.integers(0, sources.MAX_COORDINATE)] * 4)
WNIDS = st.from_regex(r"n[0-9]{8}", fullmatch=True)


@PROPERTY
@given(st.dictionaries(NAMES, st.tuples(WNIDS, BOXES), max_size=8), st.randoms())
def test_well_formed_annotations_round_trip_and_repeats_are_harmless(rows, random):
    lines = [f"{name}\t{wnid}\t" + "\t".join(map(str, box)) for name, (wnid, box) in rows.items()]
    lines += random.sample(lines, len(lines) // 2)  # Identical repeats, anywhere.
    random.shuffle(lines)
    assert sources.parse_val_annotations("\r\n".join(lines)) == (rows, {})
    boxes = {name: box for name, (_, box) in rows.items()}
    text = "\n".join(f"{name}\t" + "\t".join(map(str, box)) for name, box in boxes.items())
    assert sources.parse_boxes(text, "n1_boxes.txt") == (boxes, {})


@PROPERTY
@given(NAMES, st.tuples(WNIDS, BOXES), st.tuples(WNIDS, BOXES), st.booleans())
def test_a_disagreeing_repeat_rejects_the_image(name, first, second, swap):
    rows = [first, second] if not swap else [second, first]
    text = "".join(f"{name}\t{wnid}\t" + "\t".join(map(str, box)) + "\n" for wnid, box in rows)
    parsed = sources.parse_val_annotations(text)
    if first == second:
        assert parsed == ({name: first}, {})
    else:
        assert parsed.rows == {} and "val_annotations.txt lines 1 and 2 disagree" in parsed.conflicts[name]


@PROPERTY
@given(st.binary(max_size=40))
def test_any_file_name_hashes_and_prints(raw):
    name = raw.decode("utf-8", "surrogateescape")  # How Python hands a POSIX file name over.
    assert 0 <= sources.stable_hash(42, name) < 2**64
    shown = sources.printable(name)
    shown.encode("utf-8")  # Writable into rejected.jsonl and TFRecords.
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        assert "\\x" in shown
    else:
        assert shown == name, "valid names are shown as they are"
