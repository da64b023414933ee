"""preprocessing.summary: the shards' counts added up for metadata.json and the log."""

import collections

import pytest

from preprocessing import summary


def _shard(class_counts, boxes=0, cropped=0, sizes=None):
    return {
        "class_counts": class_counts,
        "boxes": boxes,
        "boxes_cropped": cropped,
        "source_sizes": sizes or {},
    }


def test_split_counts_add_up_per_class_and_leave_unlabeled_without_classes():
    shards = [_shard([3, 0, 1], boxes=2), _shard([1, 5, 0], boxes=4)]
    assert summary.split_counts("train", shards, 3) == {"class_counts": [4, 5, 1], "boxes": 6}
    assert summary.split_counts("valid", [], 2) == {"class_counts": [0, 0], "boxes": 0}
    assert summary.split_counts("unlabeled", [_shard([0, 0, 0])], 3) == {"boxes": 0}
    with pytest.raises(ValueError):  # A shard that counted another class table.
        summary.split_counts("train", [_shard([1, 2])], 3)


def test_source_sizes_keep_the_most_common_and_fold_the_rest():
    sizes = summary.all_source_sizes(
        [_shard([], sizes={"64x64": 5, "320x240": 2}), _shard([], sizes={"320x240": 1, "90x200": 3})]
    )
    assert sizes == collections.Counter({"64x64": 5, "320x240": 3, "90x200": 3})
    # Most common first; ties by name, whatever order the shards came in.
    assert list(summary.source_sizes(sizes).items()) == [("64x64", 5), ("320x240", 3), ("90x200", 3)]
    many = collections.Counter({f"{w}x10": w for w in range(1, 31)})
    folded = summary.source_sizes(many)
    assert len(folded) == summary.TOP_SOURCE_SIZES + 1
    assert list(folded)[: summary.TOP_SOURCE_SIZES] == [f"{w}x10" for w in range(30, 10, -1)]
    assert folded[summary.OTHER_SIZES] == sum(range(1, 11))
    assert summary.OTHER_SIZES not in summary.source_sizes(sizes)


def test_resize_line_counts_what_changed_size():
    sizes = collections.Counter({"64x64": 10, "320x240": 4, "500x375": 1})
    assert summary.resize_line(sizes, 64, "crop", 0) == (
        "resized 5 of 15 images to 64x64 (--resize crop); "
        "most common source sizes: 64x64 (10), 320x240 (4), 500x375 (1)"
    )
    assert "; 2 boxes cut away by the crop" in summary.resize_line(sizes, 64, "crop", 2)
    assert (
        summary.resize_line(collections.Counter(), 64, "pad", 0)
        == "resized 0 of 0 images to 64x64 (--resize pad)"
    )


def test_class_count_line_is_compact():
    splits = {
        "train": {"class_counts": [40, 12, 40]},
        "valid": {"class_counts": [4, 4, 4]},
        "unlabeled": {"count": 3},
    }
    line = summary.class_count_line(splits, ["cat", "dog, hound", "eel"])
    assert line == 'images per class: train 12-40 (fewest: "dog, hound"), valid 4 each'


@pytest.mark.parametrize(
    ("counts", "warned"),
    [([100, 10], False), ([101, 10], True), ([5, 0, 3], True), ([0, 0], False), ([], False), (None, False)],
)
def test_imbalance_warning_above_ten_times(counts, warned):
    names = ["big", "small", "mid"]
    line = summary.imbalance_warning(counts, names)
    assert (line is not None) == warned
    if warned:
        assert line.startswith('train classes are imbalanced: "big" has')
    if counts == [101, 10]:
        assert (
            line
            == 'train classes are imbalanced: "big" has 101 images, "small" 10: 10.1x as many (more than 10x)'
        )
    if counts == [5, 0, 3]:
        assert line == 'train classes are imbalanced: "big" has 5 images, "small" none'
