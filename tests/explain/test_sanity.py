"""explain.sanity: cascading randomisation on a trained tiny CNN, and its picture."""

import json

import keras
import numpy as np
import pytest
from scipy import stats

from explain import gradcam, pointing, render, sanity
from tests.explain import tiny_cnn

SIZE = 32
SQUARE = 8
# The class is the colour of one square placed anywhere: a fully convolutional
# net can learn it, and the evidence sits at a known place.
COLOURS = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255], [255, 255, 40]], np.float32)


def _squares(count, seed):
    """Returns ``(images, labels, boxes)``: dim noise with one coloured square per image."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(COLOURS), count)
    images = rng.uniform(0, 60, (count, SIZE, SIZE, 3)).astype(np.float32)
    corners = rng.integers(0, SIZE - SQUARE, (count, 2))
    for image, label, (y, x) in zip(images, labels, corners, strict=True):
        image[y : y + SQUARE, x : x + SQUARE] = COLOURS[label]
    boxes = np.stack(
        [corners[:, 1], corners[:, 0], corners[:, 1] + SQUARE - 1, corners[:, 0] + SQUARE - 1], axis=1
    )
    return images, labels, boxes


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained to tell the squares' colours apart, and six test images."""
    keras.utils.set_random_seed(0)
    model = tiny_cnn(SIZE, num_classes=len(COLOURS))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # Keras' 0.99 needs more steps than this test takes.
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    images, labels, _ = _squares(256, seed=0)
    model.fit(images, labels, epochs=10, batch_size=32, verbose=0)
    return model, _squares(6, seed=1)


@pytest.fixture(scope="module")
def gradcam_result(trained):
    model, (images, labels, _) = trained
    return sanity.cascading_randomization(model, images, labels, "gradcam", seed=0)


def test_trained_model_is_right_and_gradcam_points_at_the_square(trained):
    model, (images, labels, boxes) = trained
    assert (model.predict_on_batch(images).argmax(axis=1) == labels).all()
    maps = gradcam.explain(model, images, labels)
    assert pointing.pointing_hits(maps, boxes, tolerance=2).mean() >= 5 / 6


def test_randomising_the_model_destroys_gradcam_maps(gradcam_result):
    result = gradcam_result
    assert result["method"] == "gradcam" and result["layer"] == "features"
    assert result["layers"] == ["predictions", "conv1", "conv0"]
    assert result["maps"].shape == (4, 6, SIZE, SIZE)
    assert result["per_image"].shape == (4, 6)
    # Step 0 is the original model explained again: the very same maps.
    assert result["spearman"][0] == 1.0
    # Grad-CAM depends on the weights: once the head is random the maps are unrelated.
    assert max(result["spearman"][1:]) < 0.5, result["spearman"]


def test_the_callers_model_is_untouched(trained):
    model, (images, labels, _) = trained
    before = [w.copy() for w in model.get_weights()]
    probs = model.predict_on_batch(images)
    sanity.cascading_randomization(model, images[:2], labels[:2], "gradcam", steps=2, seed=3)
    after = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    np.testing.assert_array_equal(model.predict_on_batch(images), probs)


def test_a_method_that_ignores_the_model_fails_the_check(trained):
    model, (images, labels, _) = trained

    def brightness(_model):
        return lambda batch, classes: np.asarray(batch).mean(axis=-1) / 255.0

    result = sanity.cascading_randomization(
        model, images, labels, method="brightness", make_explainer=brightness
    )
    assert result["layer"] is None and len(result["layers"]) == 3
    assert result["spearman"] == [1.0] * 4


def test_steps_seed_and_argument_checks(trained, gradcam_result):
    model, (images, labels, _) = trained
    one = sanity.cascading_randomization(model, images, labels, "gradcam", steps=1, seed=0)
    assert one["layers"] == ["predictions"] and one["maps"].shape[0] == 2
    # Same seed, same randomised weights: the first step matches the full run's.
    np.testing.assert_allclose(one["maps"][1], gradcam_result["maps"][1], atol=1e-5)
    assert sanity.cascading_randomization(model, images, labels, steps=0)["spearman"] == [1.0]
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        sanity.cascading_randomization(model, images, labels, steps=-1)
    with pytest.raises(ValueError, match="Unknown method"):
        sanity.cascading_randomization(model, images, labels, method="saliency")


def test_summary_is_strict_json(gradcam_result):
    summary = json.loads(json.dumps(sanity.summary(gradcam_result), allow_nan=False))
    assert set(summary) == {"method", "layer", "layers", "spearman"}
    assert len(summary["spearman"]) == len(summary["layers"]) + 1


def test_randomizable_layers_skip_auxiliary_heads_and_batch_norm():
    model = tiny_cnn(SIZE, aux=True)
    assert sanity.randomizable_layers(model) == ["predictions", "conv1", "conv0"]


def test_randomize_layer_uses_the_layers_initializers():
    keras.utils.set_random_seed(0)
    model = tiny_cnn(SIZE)
    dense = model.get_layer("predictions")
    dense.set_weights([np.full(w.shape, 7.0, np.float32) for w in dense.get_weights()])
    sanity.randomize_layer(dense, seed=1)
    kernel, bias = dense.get_weights()
    limit = np.sqrt(6.0 / sum(kernel.shape))  # Glorot uniform, Dense's default
    assert np.abs(kernel).max() <= limit and kernel.std() > limit / 4
    assert np.array_equal(bias, np.zeros_like(bias))  # zeros, Dense's bias default
    again = tiny_cnn(SIZE).get_layer("predictions")
    sanity.randomize_layer(again, seed=1)
    np.testing.assert_array_equal(again.get_weights()[0], kernel)


def test_spearman_matches_scipy_and_handles_constant_maps():
    rng = np.random.default_rng(0)
    first, second = rng.random((3, 8, 8)), rng.random((3, 8, 8))
    second[0] = first[0] ** 3  # same ranks
    second[1] = np.round(second[1], 1)  # ties
    expected = [stats.spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(first, second, strict=True)]
    np.testing.assert_allclose(sanity.spearman(first, second), expected, atol=1e-12)
    assert sanity.spearman(first[:1], -first[:1])[0] == pytest.approx(-1.0)
    flat = np.zeros((1, 8, 8))
    assert sanity.spearman(flat, flat).tolist() == [1.0]
    assert sanity.spearman(flat, first[:1]).tolist() == [0.0]


def test_sanity_strip_layout_and_content(trained, gradcam_result):
    _, (images, _, _) = trained
    result = gradcam_result
    strip = render.sanity_strip(images, result["maps"], result["layers"], result["spearman"], tile=64)
    steps = len(result["layers"])
    line = render.FONT_SIZE + 3
    header = render.GAP + 2 * line
    assert strip.dtype == np.uint8
    assert strip.shape == (
        header + 6 * (64 + render.GAP) + render.GAP,
        (steps + 2) * (64 + render.GAP) + render.GAP,
        3,
    )
    # Titles were written, and each map column shows a heatmap, not the background.
    assert (strip[: header - render.GAP] == np.array(render._TEXT, np.uint8)).all(axis=-1).any()
    for column in range(1, steps + 2):
        x = render.GAP + column * (64 + render.GAP)
        cell = strip[header : header + 64, x : x + 64].astype(int)
        assert cell.std() > 10
    untitled = render.sanity_strip(images[:2], result["maps"][:, :2], result["layers"], tile=64)
    assert untitled.shape[0] == render.GAP + line + 2 * (64 + render.GAP) + render.GAP
    with pytest.raises(ValueError, match="layer names"):
        render.sanity_strip(images, result["maps"], result["layers"][:1])
