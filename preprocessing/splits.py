"""The split rules of the class-per-folder and manifest layouts: which images go to valid and test.

Where a source gives no ``valid`` (or no ``test``) split, the job carves one
out of each class's pool (its ``train/`` folder, the whole class, or the
manifest rows without a split word), seeded and stratified:

- **by position, not rank.** Each file's position is ``stable_hash(seed, key)``
  scaled to ``[0, 1)``; ``[0, test_fraction)`` is test, the next
  ``valid_fraction`` is valid and the rest is train. A file's split depends on
  its own key only, so adding files never moves another file, except for the
  fix-ups below. The shares are the fractions on average (each file draws
  its own), not counts rounded per class.
- **at least one each.** A class of :data:`MIN_IMAGES` or more images gets at
  least one image in train and in every carved split: when its positions
  leave one empty, the file nearest to the empty split's interval moves there
  from the largest split, one file per empty split.
- **small classes train.** A class with fewer images cannot be carved without
  losing its train images; all of them go to train, and the planner names the
  class in one warning line.

Pure: no file system, no logging; :mod:`preprocessing.plan` applies it.
"""

import dataclasses

from preprocessing import sources

# A class needs this many images to have one in train, valid and test.
MIN_IMAGES = 3
CARVABLE = ("valid", "test")
TRAIN = "train"
# The order of the intervals on [0, 1): test first, then valid, then train.
INTERVAL_ORDER = ("test", "valid")
_HASH_SPACE = float(2**64)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """The splits of one class's pool.

    Attributes:
        splits: ``{key: split}`` for every key of the pool.
        moved: The keys whose split is not their position's (:func:`position_split`): the fix-ups,
            or every carved key of a class too small to carve.
    """

    splits: dict
    moved: frozenset


def carved_fractions(valid_fraction, test_fraction, given):
    """Returns ``{split: fraction}`` of the splits to carve: those the source does not give, with a share.

    Args:
        valid_fraction: ``--valid-fraction``.
        test_fraction: ``--test-fraction``.
        given: The splits the source gives itself (folders or split words).
    """
    wanted = {"valid": valid_fraction, "test": test_fraction}
    return {split: fraction for split, fraction in wanted.items() if split not in given and fraction > 0}


def position(seed, key):
    """The key's place on ``[0, 1)``: :func:`preprocessing.sources.stable_hash` scaled."""
    return sources.stable_hash(seed, key) / _HASH_SPACE


def intervals(fractions):
    """Returns ``{split: (low, high)}``: test from 0, then valid, then train up to 1."""
    bounds, low = {}, 0.0
    for split in INTERVAL_ORDER:
        if split in fractions:
            bounds[split] = (low, low + fractions[split])
            low += fractions[split]
    bounds[TRAIN] = (low, 1.0)
    return bounds


def position_split(place, bounds):
    """The split whose interval holds ``place`` (:func:`intervals`)."""
    for split, (low, high) in bounds.items():
        if low <= place < high:
            return split
    return TRAIN


def _distance(place, interval):
    low, high = interval
    return max(low - place, place - high, 0.0)


def assign(keys, seed, fractions):
    """Deals one class's pool into train and the carved splits.

    Args:
        keys: The pool's keys (paths), in any order; duplicates count once.
        seed: ``--seed``.
        fractions: :func:`carved_fractions`; empty carves nothing (all train).

    Returns:
        An :class:`Assignment`.
    """
    keys = sorted(set(keys))
    bounds = intervals(fractions)
    places = {key: position(seed, key) for key in keys}
    natural = {key: position_split(places[key], bounds) for key in keys}
    # A small class is not carved at all: its few images are worth more in train.
    small = len(keys) < MIN_IMAGES
    splits = dict.fromkeys(keys, TRAIN) if small else _fix_up(dict(natural), places, bounds)
    moved = frozenset(key for key in keys if splits[key] != natural[key])
    return Assignment(splits, moved)


def _fix_up(splits, places, bounds):
    """Moves one file into each empty split, from the largest split, the nearest file first."""
    order = list(bounds)  # Carved splits, then train: a fixed order breaks ties.
    members = {split: sorted(k for k, s in splits.items() if s == split) for split in order}
    for empty in [split for split in order if not members[split]]:
        # With >= MIN_IMAGES keys and at most three splits, the largest holds at least two.
        donor = max(order, key=lambda split: (len(members[split]), -order.index(split)))
        key = min(members[donor], key=lambda k: (_distance(places[k], bounds[empty]), k))
        members[donor].remove(key)
        members[empty].append(key)
        splits[key] = empty
    return splits


def carve(pools, seed, fractions):
    """Deals every class's pool (:func:`assign`).

    Args:
        pools: ``{class: [keys]}``, no key in two classes.
        seed: ``--seed``.
        fractions: :func:`carved_fractions`.

    Returns:
        ``({key: split}, the classes with fewer than MIN_IMAGES keys when something is carved, sorted)``.
    """
    splits, small = {}, []
    for name in sorted(pools):
        if fractions and len(set(pools[name])) < MIN_IMAGES:
            small.append(name)
        splits.update(assign(pools[name], seed, fractions).splits)
    return splits, small
