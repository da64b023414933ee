"""Pointing-game arithmetic on hand-made maps and boxes."""

import numpy as np
import pytest

from explain import pointing


def _delta(size, y, x, value=1.0):
    heatmap = np.zeros((size, size), np.float32)
    heatmap[y, x] = value
    return heatmap


def test_peaks_are_row_column():
    maps = np.stack([_delta(8, 1, 6), _delta(8, 7, 0)])
    assert pointing.peaks(maps).tolist() == [[1, 6], [7, 0]]


def test_hit_and_miss_with_inclusive_boxes():
    box = [2, 3, 5, 6]  # xmin, ymin, xmax, ymax
    maps = np.stack(
        [
            _delta(10, 3, 2),  # top-left corner: inside (inclusive)
            _delta(10, 6, 5),  # bottom-right corner: inside
            _delta(10, 2, 4),  # one row above
            _delta(10, 4, 6),  # one column right
            _delta(10, 3, 5),  # x=5, y=3: inside
        ]
    )
    hits = pointing.pointing_hits(maps, np.tile(box, (5, 1)))
    assert hits.tolist() == [True, True, False, False, True]


def test_tolerance_is_euclidean_distance_to_box():
    box = np.array([[4, 4, 5, 5]] * 3)
    maps = np.stack([_delta(12, 4, 7), _delta(12, 8, 8), _delta(12, 1, 4)])
    # Distances: 2 (right), hypot(3, 3)=4.24 (diagonal), 3 (above).
    assert pointing.pointing_hits(maps, box, tolerance=0).tolist() == [False, False, False]
    assert pointing.pointing_hits(maps, box, tolerance=2).tolist() == [True, False, False]
    assert pointing.pointing_hits(maps, box, tolerance=3).tolist() == [True, False, True]
    assert pointing.pointing_hits(maps, box, tolerance=4.25).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="tolerance"):
        pointing.pointing_hits(maps, box, tolerance=-1)


def test_energy_fraction():
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[0, 0] = 3.0  # inside the box below
    heatmap[3, 3] = 1.0  # outside
    box = np.array([[0, 0, 1, 1]])
    assert pointing.energy_in_box(heatmap[None], box)[0] == pytest.approx(0.75)
    uniform = np.ones((1, 10, 10))
    assert pointing.energy_in_box(uniform, np.array([[0, 0, 4, 1]]))[0] == pytest.approx(10 / 100)
    assert pointing.energy_in_box(np.zeros((1, 4, 4)), box)[0] == 0.0


def test_box_masks_are_inclusive():
    mask = pointing.box_masks(np.array([[1, 2, 3, 2]]), 5, 5)[0]
    assert mask.sum() == 3 and mask[2, 1:4].all()


def test_center_and_random_baselines():
    center = pointing.center_maps(2, 9, 9)
    assert pointing.peaks(center).tolist() == [[4, 4], [4, 4]]
    rng = np.random.default_rng(0)
    randoms = pointing.random_maps(500, 9, 9, rng)
    found = pointing.peaks(randoms)
    assert found.min() == 0 and found.max() == 8
    # Uniform peaks: each row is hit about 1/9 of the time.
    counts = np.bincount(found[:, 0], minlength=9)
    assert counts.min() > 25 and counts.max() < 90
    again = pointing.peaks(pointing.random_maps(500, 9, 9, np.random.default_rng(0)))
    assert np.array_equal(found, again)


def test_pointing_game_summary_overall_and_per_class():
    size = 16
    game = pointing.PointingGame(tolerance=0, seed=3)
    boxes = np.array([[0, 0, 3, 3], [0, 0, 3, 3], [12, 12, 15, 15], [6, 6, 9, 9]])
    maps = np.stack([_delta(size, 1, 1), _delta(size, 10, 10), _delta(size, 13, 14), _delta(size, 0, 0)])
    game.add(maps[:2], boxes[:2], labels=[0, 0])
    game.add(maps[2:], boxes[2:], labels=[1, 2], has_box=[True, False])
    assert game.count == 3
    summary = game.summary(class_names=["a", "b", "c"])
    assert summary["n"] == 3
    assert summary["pointing_game"]["hit_rate"] == pytest.approx(2 / 3)
    assert game.hit_rate == summary["pointing_game"]["hit_rate"]
    # The centre (8, 8) is in none of the three scored boxes.
    assert summary["pointing_game"]["center_baseline"] == 0.0
    assert summary["energy_in_box"] == pytest.approx(2 / 3)
    per_class = {entry["class_index"]: entry for entry in summary["per_class"]}
    assert set(per_class) == {0, 1}
    assert per_class[0]["class_name"] == "a" and per_class[0]["n"] == 2
    assert per_class[0]["hit_rate"] == 0.5 and per_class[1]["hit_rate"] == 1.0


def test_center_baseline_hits_central_boxes():
    game = pointing.PointingGame()
    boxes = np.array([[6, 6, 10, 10]] * 4)
    game.add(np.zeros((4, 16, 16)), boxes, labels=[0, 1, 2, 3])
    summary = game.summary()
    assert summary["pointing_game"]["center_baseline"] == 1.0
    # A zero map peaks at (0, 0): a miss, and no energy anywhere.
    assert summary["pointing_game"]["hit_rate"] == 0.0
    assert summary["energy_in_box"] == 0.0
    assert 0.0 < summary["energy_baselines"]["center_baseline"] < 1.0


def test_random_baseline_is_seeded_and_near_box_area_share():
    boxes = np.array([[0, 0, 7, 15]] * 400)  # the left half of a 16x16 image
    results = []
    for seed in (5, 5, 6):
        game = pointing.PointingGame(seed=seed)
        game.add(np.zeros((400, 16, 16)), boxes, labels=np.zeros(400, int))
        results.append(game.summary()["pointing_game"]["random_baseline"])
    assert results[0] == results[1]
    assert 0.4 < results[0] < 0.6 and 0.4 < results[2] < 0.6


def test_empty_game_reports_none():
    summary = pointing.PointingGame().summary()
    assert summary["n"] == 0 and summary["pointing_game"]["hit_rate"] is None
    assert pointing.PointingGame().hit_rate is None


def test_shift_boxes_into_a_crop():
    boxes = np.array([[4, 4, 20, 30], [0, 0, 2, 2], [50, 10, 63, 63]])
    shifted, valid = pointing.shift_boxes(boxes, offset=(4, 4), size=(56, 56))
    assert shifted.tolist() == [[0, 0, 16, 26], [0, 0, 0, 0], [46, 6, 55, 55]]
    assert valid.tolist() == [True, False, True]


def test_skip_reason_reads_the_box_count_then_the_selection():
    # The count of metadata.json decides, whatever the records say.
    assert (
        pointing.skip_reason(0, "test", has_box=[True, True])
        == "the dataset has no object boxes (metadata.json: 0 boxes in test)"
    )
    assert pointing.skip_reason(0, "valid").endswith("(metadata.json: 0 boxes in valid)")
    # A dataset written before the count: the selected images' flags decide.
    assert (
        pointing.skip_reason(None, "test", has_box=np.zeros(6, bool))
        == "none of the 6 selected test images has an object box"
    )
    assert pointing.skip_reason(None, "test", has_box=[False, True]) is None
    assert pointing.skip_reason(None, "test") is None
    # Boxes elsewhere in the split but none among the chosen images: nothing to score either.
    assert pointing.skip_reason(3, "test", has_box=[False] * 4) == (
        "none of the 4 selected test images has an object box"
    )
    assert pointing.skip_reason(3, "test", has_box=[False, True]) is None
    assert pointing.skipped_line("why") == "pointing game skipped: why"


def test_skipped_summary_has_a_reason_and_no_score():
    summary = pointing.skipped_summary("no boxes", tolerance=2.0)
    assert summary == {"n": 0, "tolerance": 2.0, "pointing_game": {"skipped": "no boxes"}}


def test_box_areas():
    boxes = [[0, 0, 15, 15], [0, 0, 7, 15], [4, 4, 4, 4], [0, 0, 14, 14]]
    assert pointing.box_areas(boxes, 16, 16).tolist() == pytest.approx([1.0, 0.5, 1 / 256, 225 / 256])


def test_whole_image_boxes_flag_the_game_and_keep_its_numbers():
    count, size = 40, 16
    maps = np.random.default_rng(0).uniform(size=(count, size, size))
    game = pointing.PointingGame(seed=1)
    # 15 x 15 of 16 x 16 is 88% of the image (not "whole"); 16 x 16 is.
    boxes = np.array([[0, 0, 15, 15]] * 30 + [[0, 0, 14, 14]] * 10)
    game.add(maps, boxes, labels=np.zeros(count, int))
    summary = game.summary()
    found = summary["pointing_game"]
    # Every peak is in a whole-image box: the model and both baselines hit on those images.
    assert found["center_baseline"] == 1.0 and found["random_baseline"] >= 0.75
    assert found["hit_rate"] >= 0.75 and found["whole_image_boxes"] == 0.75
    assert found["uninformative"] == (
        "the pointing game cannot tell the model from its baselines: the boxes of 30 of 40 scored images "
        "cover at least 90% of the image, so the centre and random baselines hit too "
        f"({found['center_baseline']:.3f} and {found['random_baseline']:.3f} "
        f"against the model's {found['hit_rate']:.3f})"
    )
    assert "\n" not in found["uninformative"]


def test_half_or_fewer_whole_image_boxes_leave_the_game_informative():
    maps = np.random.default_rng(0).uniform(size=(4, 16, 16))
    game = pointing.PointingGame()
    game.add(maps, np.array([[0, 0, 15, 15]] * 2 + [[2, 2, 5, 5]] * 2), labels=[0, 0, 1, 1])
    found = game.summary()["pointing_game"]
    assert found["whole_image_boxes"] == 0.5 and found["uninformative"] is None
    # Ordinary boxes: no flag.
    small = pointing.PointingGame()
    small.add(maps, np.array([[6, 6, 10, 10]] * 4), labels=[0, 1, 2, 3])
    assert small.summary()["pointing_game"]["whole_image_boxes"] == 0.0
    assert small.summary()["pointing_game"]["uninformative"] is None
