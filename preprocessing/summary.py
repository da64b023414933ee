"""The shards' counts added up for ``metadata.json`` and the job's log: classes, boxes, source sizes.

Each shard's DoFn reports what it wrote (:class:`preprocessing.transforms.ShardSummary`,
read back here as the dicts of the counts file); ``preprocessing.task.write_metadata``
adds them up with these pure functions, so a class that lost most of its images
to the dead letters, a dataset without boxes or a folder of mixed photo sizes is
visible in ``metadata.json`` and in one log line, not discovered in training.
"""

import collections

from contracts import schema

# metadata.json's "source_sizes" keeps the most common sizes and folds the rest into one count.
TOP_SOURCE_SIZES = 20
OTHER_SIZES = "other"
# Largest over smallest train class above which the job warns (the trainer sees a skewed prior).
IMBALANCE_RATIO = 10
# Source sizes named in the log line.
LOGGED_SIZES = 3


def split_counts(split, shards, num_classes):
    """Adds up one split's shards.

    Args:
        split: The split's name.
        shards: The split's summaries (dicts of :class:`preprocessing.transforms.ShardSummary`).
        num_classes: Length of the class table.

    Returns:
        ``{"class_counts": [records per class index], "boxes": records with a box}``;
        without ``class_counts`` for a split that has no labels (``unlabeled``).
    """
    counts = {}
    if split in schema.LABELED_SPLITS:
        class_counts = [0] * num_classes
        for shard in shards:
            # strict: a shard that counted another class table is an internal error, not a guess.
            class_counts = [a + b for a, b in zip(class_counts, shard["class_counts"], strict=True)]
        counts["class_counts"] = class_counts
    counts["boxes"] = sum(shard["boxes"] for shard in shards)
    return counts


def all_source_sizes(summaries):
    """Returns a ``collections.Counter`` of ``"WxH"`` source sizes over every shard."""
    sizes = collections.Counter()
    for shard in summaries:
        sizes.update(shard["source_sizes"])
    return sizes


def source_sizes(sizes, top=TOP_SOURCE_SIZES):
    """``metadata.json``'s ``source_sizes``: the ``top`` most common sizes, most common first.

    Sizes beyond ``top`` are summed under :data:`OTHER_SIZES`. Ties are ordered
    by name, so the result does not depend on the order the shards finished in.

    Args:
        sizes: ``{"WxH": records}`` (:func:`all_source_sizes`).
        top: How many sizes to name.

    Returns:
        ``{"WxH": records, ..., "other": records}`` (``other`` only when there are more sizes).
    """
    ranked = sorted(sizes.items(), key=lambda pair: (-pair[1], pair[0]))
    kept = dict(ranked[:top])
    if len(ranked) > top:
        kept[OTHER_SIZES] = sum(count for _, count in ranked[top:])
    return kept


def boxes_cropped(summaries):
    """Records whose box the ``crop`` policy cut away entirely, over every shard."""
    return sum(shard["boxes_cropped"] for shard in summaries)


def resize_line(sizes, size, policy, cropped):
    """One log line: how many images were resized, from which sizes, and the boxes lost."""
    total = sum(sizes.values())
    resized = total - sizes.get(f"{size}x{size}", 0)
    common = ", ".join(
        f"{name} ({count})" for name, count in list(source_sizes(sizes).items())[:LOGGED_SIZES]
    )
    line = f"resized {resized} of {total} images to {size}x{size} (--resize {policy})"
    if cropped:
        line += f"; {cropped} boxes cut away by the crop (stored without a box)"
    if common:
        line += f"; most common source sizes: {common}"
    return line


def class_count_line(splits, names):
    """One log line of images per class, per labelled split: ``train 36-40 (fewest: "cat"), test 8 each``.

    Args:
        splits: ``metadata.json``'s ``splits`` (each labelled split with ``class_counts``).
        names: Class names in class-index order.

    Returns:
        The line.
    """
    parts = []
    for split, entry in splits.items():
        counts = entry.get("class_counts")
        if counts is None:
            continue
        low, high = min(counts, default=0), max(counts, default=0)
        if low == high:
            parts.append(f"{split} {low} each")
        else:
            parts.append(f'{split} {low}-{high} (fewest: "{names[counts.index(low)]}")')
    return "images per class: " + ", ".join(parts)


def imbalance_warning(counts, names, split="train", ratio=IMBALANCE_RATIO):
    """The one warning line when a split's largest class has more than ``ratio`` x its smallest.

    Args:
        counts: The split's records per class index.
        names: Class names in class-index order.
        split: The split's name, for the line.
        ratio: The threshold.

    Returns:
        The line, or ``None`` when the classes are balanced enough (or there are none).
    """
    if not counts:
        return None
    low, high = min(counts), max(counts)
    if high <= ratio * low:
        return None
    smallest, largest = names[counts.index(low)], names[counts.index(high)]
    line = f'{split} classes are imbalanced: "{largest}" has {high} images, "{smallest}" '
    if not low:
        return line + "none"
    return line + f"{low}: {high / low:.1f}x as many (more than {ratio}x)"
