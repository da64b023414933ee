"""explain.faithfulness on a model whose answer depends on one known patch, and its plot."""

import json

import numpy as np
import pytest

from explain import faithfulness, pointing, render
from tests.explain import tiny_cnn

SIZE = 32
# The patch (rows, cols, inclusive) the hand-built model reads: off centre, so
# the centre baseline is not accidentally right.
ROWS = (4, 11)
COLS = (18, 25)
PATCH_CENTRE = ((ROWS[0] + ROWS[1]) / 2, (COLS[0] + COLS[1]) / 2)
ELSEWHERE = (26, 5)


def _patch_predict(images):
    """Two-class probabilities: class 0 grows with the patch's mean brightness, nothing else counts."""
    images = np.asarray(images, dtype=np.float64)
    brightness = images[:, ROWS[0] : ROWS[1] + 1, COLS[0] : COLS[1] + 1].mean(axis=(1, 2, 3)) / 255.0
    # Steep around the bright patch's level, so losing part of it shows.
    p0 = 1.0 / (1.0 + np.exp(-20.0 * (brightness - 0.8)))
    return np.stack([p0, 1.0 - p0], axis=1)


class _CountingPredict:
    """Wraps :func:`_patch_predict`, remembering the size of every call."""

    def __init__(self):
        self.sizes = []

    def __call__(self, images):
        self.sizes.append(len(images))
        return _patch_predict(images)


def _images(count=6, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 80, size=(count, SIZE, SIZE, 3)).astype(np.float32)
    images[:, ROWS[0] : ROWS[1] + 1, COLS[0] : COLS[1] + 1] = 255.0
    return images


def _maps(centre, count=6):
    return pointing.gaussian_maps(np.tile([centre], (count, 1)), SIZE, SIZE, sigma=0.1)


def _summary(centre, road=False, seed=0, count=6):
    scorer = faithfulness.Faithfulness(_patch_predict, seed=seed, road=road)
    scorer.add(_images(count), _maps(centre, count), np.zeros(count, int))
    return scorer.summary()


@pytest.fixture(scope="module")
def right_with_road():
    return _summary(PATCH_CENTRE, road=True)


def test_area_is_the_mean_height_of_the_curve():
    assert faithfulness.area([0.3] * len(faithfulness.FRACTIONS), faithfulness.FRACTIONS) == pytest.approx(
        0.3
    )
    assert faithfulness.area([0.7] * 5, faithfulness.ROAD_FRACTIONS) == pytest.approx(0.7)
    assert faithfulness.area(faithfulness.FRACTIONS, faithfulness.FRACTIONS) == pytest.approx(0.5)
    # Trapezoids, not the mean of the points: unequal spacing weighs the segments.
    assert faithfulness.area([0.0, 1.0, 1.0], [0.0, 0.5, 1.0]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="increasing"):
        faithfulness.area([1.0, 2.0], [0.5, 0.5])


def test_removal_ranks_follow_the_map_and_break_ties_randomly():
    ramp = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    ranks = faithfulness.removal_ranks(ramp, np.random.default_rng(0))
    assert ranks.reshape(-1).tolist() == list(range(11, -1, -1))
    flat = np.zeros((1, SIZE, SIZE), np.float32)
    first = faithfulness.removal_ranks(flat, np.random.default_rng(1))
    again = faithfulness.removal_ranks(flat, np.random.default_rng(1))
    assert np.array_equal(first, again)
    assert sorted(first.reshape(-1).tolist()) == list(range(SIZE * SIZE))
    # The first sixteenth of a flat map is spread over the image, not the top rows.
    rows, _ = np.nonzero(first[0] < SIZE * SIZE // 16)
    assert 10 < rows.mean() < 22 and rows.max() > SIZE // 2


def _gradient(height=24, width=20):
    y, x = np.mgrid[:height, :width].astype(np.float32)
    return np.stack([3 * y + 2 * x, 100 + 0.5 * x, 200 - 4 * y], axis=-1)


def test_impute_reproduces_a_linear_gradient_and_keeps_known_pixels():
    image = _gradient()
    removed = np.zeros(image.shape[:2], bool)
    removed[3:15, 4:17] = True  # a block: every filled pixel has filled neighbours
    removed[18:22:2, 2:18:3] = True  # and isolated pixels
    filled = faithfulness.impute(image, removed)
    np.testing.assert_allclose(filled, image, atol=1e-3)
    # Nothing to see from the mask: the block's values are not a constant fill.
    assert np.ptp(filled[3:15, 4:17, 0]) > 50
    # Known pixels come back bit for bit, even where the image is not smooth.
    bumpy = image + np.random.default_rng(0).uniform(0, 30, image.shape).astype(np.float32)
    assert np.array_equal(faithfulness.impute(bumpy, removed)[~removed], bumpy[~removed])


def test_impute_weighs_direct_neighbours_twice_the_diagonal_ones():
    image = np.zeros((5, 5, 1), np.float32)
    image[1, 2] = 60.0  # a direct neighbour of (2, 2): weight 1/6
    image[3, 3] = 120.0  # a diagonal one: weight 1/12
    removed = np.zeros((5, 5), bool)
    removed[2, 2] = removed[0, 0] = True
    filled = faithfulness.impute(image, removed)
    assert filled[2, 2, 0] == pytest.approx(60.0 / 6 + 120.0 / 12)
    # At the corner only three neighbours exist; their weights are renormalised.
    image[0, 1], image[1, 1] = 50.0, 100.0
    filled = faithfulness.impute(image, removed)
    assert filled[0, 0, 0] == pytest.approx((50.0 / 6 + 100.0 / 12) / (1 / 6 + 1 / 6 + 1 / 12))


def test_impute_noise_is_seeded_and_only_on_removed_pixels():
    image = _gradient()
    removed = np.zeros(image.shape[:2], bool)
    removed[4:20, 4:16] = True
    noisy = faithfulness.impute(image, removed, noise=2.55, rng=np.random.default_rng(3))
    again = faithfulness.impute(image, removed, noise=2.55, rng=np.random.default_rng(3))
    assert np.array_equal(noisy, again)
    assert np.array_equal(noisy[~removed], image[~removed])
    assert (noisy[removed] - image[removed]).std() == pytest.approx(2.55, rel=0.15)
    with pytest.raises(ValueError, match="known pixel"):
        faithfulness.impute(image, np.ones(image.shape[:2], bool))


def test_blur_keeps_the_mean_and_removes_detail():
    images = _images(2)
    blurred = faithfulness.blur(images)
    assert blurred.shape == images.shape and blurred.dtype == np.float32
    assert blurred.mean() == pytest.approx(images.mean(), rel=0.02)
    assert blurred.std() < 0.6 * images.std()


def test_deletion_and_insertion_reward_the_map_on_the_evidence():
    right, wrong = _summary(PATCH_CENTRE), _summary(ELSEWHERE)
    assert right["deletion"]["auc"] < wrong["deletion"]["auc"] - 0.3
    assert right["insertion"]["auc"] > wrong["insertion"]["auc"] + 0.3
    for baseline in ("random", "center"):
        assert right["deletion"]["auc"] < right["deletion"][f"{baseline}_auc"] - 0.1
        assert right["insertion"]["auc"] > right["insertion"][f"{baseline}_auc"] + 0.1
        assert right["deletion"][f"beats_{baseline}"] >= 5 / 6
        assert right["insertion"][f"beats_{baseline}"] >= 5 / 6
    # The map elsewhere is worse than the centre, which is nearer the patch.
    assert wrong["deletion"]["auc"] > wrong["deletion"]["center_auc"]
    assert wrong["deletion"]["beats_center"] == 0.0
    # Both curves join the original (no pixel moved) and the blurred image.
    for summary in (right, wrong):
        deletion, insertion = summary["deletion"], summary["insertion"]
        for key in ("curve", "random_curve", "center_curve"):
            assert deletion[key][0] == pytest.approx(insertion[key][-1])
            assert deletion[key][-1] == pytest.approx(insertion[key][0])
        assert deletion["curve"][0] > 0.95 and deletion["curve"][-1] < 0.2


def test_road_morf_drops_faster_than_lerf_with_the_right_map(right_with_road):
    morf, lerf = right_with_road["road_morf"], right_with_road["road_lerf"]
    assert len(morf["curve"]) == len(faithfulness.ROAD_FRACTIONS)
    # Removing the patch first kills class 0 at once; removing it last never does.
    assert morf["auc"] < 0.1 and lerf["auc"] > 0.9
    assert morf["auc"] < morf["random_auc"] and morf["auc"] < morf["center_auc"]
    assert lerf["auc"] > lerf["random_auc"] and lerf["auc"] > lerf["center_auc"]
    wrong = _summary(ELSEWHERE, road=True, count=2)
    assert wrong["road_morf"]["auc"] > 0.5 and wrong["road_lerf"]["auc"] < 0.5


def test_each_fraction_is_one_predict_call_on_the_whole_batch():
    predict = _CountingPredict()
    scorer = faithfulness.Faithfulness(predict, road=True)
    scorer.add(_images(3), _maps(PATCH_CENTRE, 3), np.zeros(3, int))
    # 3 images x 3 maps x 2 curves (deletion + insertion, or MoRF + LeRF).
    assert predict.sizes == [18] * (len(faithfulness.FRACTIONS) + len(faithfulness.ROAD_FRACTIONS))
    cheap = _CountingPredict()
    faithfulness.Faithfulness(cheap, road=False).add(_images(3), _maps(PATCH_CENTRE, 3), np.zeros(3, int))
    assert len(cheap.sizes) == len(faithfulness.FRACTIONS)


def test_summary_is_strict_json_with_the_documented_shape(right_with_road):
    text = json.dumps(right_with_road, allow_nan=False)
    summary = json.loads(text)
    assert summary["n"] == 6
    assert summary["fractions"] == list(faithfulness.FRACTIONS)
    assert summary["road_fractions"] == list(faithfulness.ROAD_FRACTIONS)
    for metric in ("deletion", "insertion", "road_morf", "road_lerf"):
        entry = summary[metric]
        length = len(summary["road_fractions" if metric.startswith("road") else "fractions"])
        assert {len(entry[k]) for k in ("curve", "random_curve", "center_curve")} == {length}
        for key in ("auc", "random_auc", "center_auc", "beats_random", "beats_center"):
            assert 0.0 <= entry[key] <= 1.0
    cheap = _summary(PATCH_CENTRE, road=False)
    assert cheap["road_morf"] is None and cheap["road_lerf"] is None and cheap["road_fractions"] is None
    empty = faithfulness.Faithfulness(_patch_predict).summary()
    assert empty["n"] == 0 and empty["deletion"] is None
    json.dumps(empty, allow_nan=False)


def test_results_are_seeded():
    assert _summary(PATCH_CENTRE, road=True, count=2) == _summary(PATCH_CENTRE, road=True, count=2)
    first, other = _summary(PATCH_CENTRE, seed=0), _summary(PATCH_CENTRE, seed=1)
    assert first["deletion"]["random_auc"] != other["deletion"]["random_auc"]
    # The random baseline does not depend on whether ROAD runs.
    assert (
        _summary(PATCH_CENTRE, road=True, count=2)["deletion"] == _summary(PATCH_CENTRE, count=2)["deletion"]
    )


def test_batches_accumulate_and_bad_shapes_are_refused():
    scorer = faithfulness.Faithfulness(_patch_predict, road=False)
    scorer.add(_images(2), _maps(PATCH_CENTRE, 2), [0, 0])
    scorer.add(_images(3, seed=1), _maps(PATCH_CENTRE, 3), [0, 0, 0])
    assert scorer.count == 5 and scorer.summary()["n"] == 5
    with pytest.raises(ValueError, match="maps"):
        scorer.add(_images(2), _maps(PATCH_CENTRE, 3), [0, 0])
    with pytest.raises(ValueError, match="fractions must run from 0 to 1"):
        faithfulness.Faithfulness(_patch_predict, fractions=(0.0, 0.5))
    with pytest.raises(ValueError, match=r"road_fractions must lie in \(0, 1\)"):
        faithfulness.Faithfulness(_patch_predict, road_fractions=(0.5, 1.0))


def test_predictor_scores_the_main_output_of_a_keras_model():
    model = tiny_cnn(SIZE, aux=True)
    images = _images(5)
    predict = faithfulness.predictor(model, batch_size=2)
    probs = predict(images)
    expected = np.asarray(model.predict_on_batch(images)["predictions"])
    assert probs.shape == (5, 5) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    scorer = faithfulness.Faithfulness(predict, road=False)
    scorer.add(images[:2], _maps(PATCH_CENTRE, 2), [1, 3])
    assert scorer.summary()["n"] == 2


def test_curves_plot_is_legible_and_drawn(right_with_road):
    image = render.curves(right_with_road, label="gradcam")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[1] == 2 * render.PLOT_WIDTH + 3 * render.GAP >= 400
    assert image.shape[0] == 2 * (render.PLOT_HEIGHT + render.GAP) + render.GAP  # four panels
    for colour in render._CURVE_COLOURS.values():
        assert (image == np.array(colour, np.uint8)).all(axis=-1).sum() > 50
    cheap = render.curves(_summary(PATCH_CENTRE, count=2))
    assert cheap.shape[0] == render.PLOT_HEIGHT + 2 * render.GAP  # deletion and insertion only
    with pytest.raises(ValueError, match="no scored metric"):
        render.curves(faithfulness.Faithfulness(_patch_predict).summary())
