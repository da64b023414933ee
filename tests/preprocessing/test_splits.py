"""The carved splits (preprocessing.splits), property-based (hypothesis).

"Fractions respected" is measured as the rule is written: every file whose
split the fix-ups did not touch lies in its own position's interval (exact),
and over a large pool the shares are the fractions within a binomial margin
(each file draws its own position, so counts are not rounded per class).
"""

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from preprocessing import splits

PROPERTY = settings(max_examples=200, deadline=None)
NAMES = st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=40, unique=True)
FRACTION = st.floats(min_value=0.0, max_value=0.45, allow_nan=False)
SEED = st.integers(min_value=0, max_value=2**32)
GIVEN = st.sets(st.sampled_from(["valid", "test"]))


@st.composite
def fractions(draw):
    return splits.carved_fractions(draw(FRACTION), draw(FRACTION), draw(GIVEN))


@PROPERTY
@given(NAMES, SEED, fractions(), st.randoms())
def test_deterministic_disjoint_and_complete(names, seed, carved, random):
    result = splits.assign(names, seed, carved)
    shuffled = list(names)
    random.shuffle(shuffled)
    assert splits.assign(shuffled + names[:3], seed, carved) == result, "order and repeats change nothing"
    assert set(result.splits) == set(names), "every key once"
    assert set(result.splits.values()) <= {"train", *carved}, "only train and the carved splits"


@PROPERTY
@given(NAMES, SEED, fractions())
def test_every_split_holds_one_image_of_a_class_of_three(names, seed, carved):
    result = splits.assign(names, seed, carved)
    held = set(result.splits.values())
    if len(names) >= splits.MIN_IMAGES:
        assert held == {"train", *carved}, "train and every carved split hold at least one image"
        assert len(result.moved) <= len(carved), "at most one fix-up per carved split"
    else:
        assert held <= {"train"}, "a class too small to carve stays in train"


@PROPERTY
@given(NAMES, SEED, fractions())
def test_untouched_files_follow_their_position(names, seed, carved):
    result = splits.assign(names, seed, carved)
    bounds = splits.intervals(carved)
    for name, split in result.splits.items():
        low, high = bounds[split]
        inside = low <= splits.position(seed, name) < high
        assert inside != (name in result.moved), "a file leaves its position's split only as a fix-up"


@PROPERTY
@given(NAMES, NAMES, SEED, fractions())
def test_adding_files_moves_no_other_file_but_fix_ups(names, more, seed, carved):
    before = splits.assign(names, seed, carved)
    after = splits.assign(names + more, seed, carved)
    changed = {name for name in names if before.splits[name] != after.splits[name]}
    assert changed <= before.moved | after.moved
    if len(names) >= splits.MIN_IMAGES:
        assert len(changed) <= 2 * len(carved)


@settings(max_examples=30, deadline=None)
@given(SEED, FRACTION, FRACTION)
def test_shares_are_the_fractions_over_a_large_pool(seed, valid, test):
    assume(valid + test < 0.9)
    names = [f"class/photo_{i}.jpg" for i in range(3000)]
    result = splits.assign(names, seed, splits.carved_fractions(valid, test, set()))
    for split, fraction in (("valid", valid), ("test", test)):
        count = sum(s == split for s in result.splits.values())
        if fraction == 0:
            assert count == 0
            continue
        margin = 5 * math.sqrt(len(names) * fraction * (1 - fraction)) + 2
        assert abs(count - fraction * len(names)) <= margin, (split, count, fraction)


def test_small_fix_up_examples():
    carved = {"valid": 0.1, "test": 0.1}
    three = splits.assign(["a", "b", "c"], 42, carved)
    assert sorted(three.splits.values()) == ["test", "train", "valid"]
    assert splits.assign(["a", "b"], 42, carved).splits == {"a": "train", "b": "train"}
    assert splits.assign([], 42, carved).splits == {}
    assert set(splits.assign(list("abcdefgh"), 42, {}).splits.values()) == {"train"}, "nothing carved"


def test_seed_changes_the_split():
    names = [f"n{i}" for i in range(200)]
    carved = {"valid": 0.2, "test": 0.2}
    assert splits.assign(names, 1, carved).splits != splits.assign(names, 2, carved).splits


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (set(), {"valid": 0.1, "test": 0.2}),
        ({"valid"}, {"test": 0.2}),
        ({"test", "train"}, {"valid": 0.1}),
        ({"valid", "test"}, {}),
    ],
)
def test_only_missing_splits_are_carved(given, expected):
    assert splits.carved_fractions(0.1, 0.2, given) == expected
    assert splits.carved_fractions(0.0, 0.2, set()) == {"test": 0.2}, "a zero share carves nothing"


def test_carve_deals_each_class_and_names_the_small_ones():
    pools = {"cat": [f"cat/{i}.jpg" for i in range(30)], "dog": ["dog/1.jpg", "dog/2.jpg"]}
    pools["emu"] = ["emu/1.jpg"]
    dealt, small = splits.carve(pools, 7, {"valid": 0.2, "test": 0.2})
    assert small == ["dog", "emu"]
    assert {dealt[f"cat/{i}.jpg"] for i in range(30)} == {"train", "valid", "test"}
    assert dealt["dog/1.jpg"] == dealt["dog/2.jpg"] == dealt["emu/1.jpg"] == "train"
    assert splits.carve(pools, 7, {})[1] == [], "nothing carved: no class is too small"
