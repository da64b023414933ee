"""explain.gradcam and explain.layers on hand-built models with a known answer."""

import keras
import numpy as np
import pytest

from contracts import model as model_contract
from explain import gradcam, layers

SIZE = 32
# The window (rows, cols, inclusive) the tiny model's output depends on: off
# centre and not square-symmetric, so a transposed or flipped map fails.
ROWS = (4, 11)
COLS = (20, 27)


def _window_model(num_classes=3, aux=False, named=False):
    """A conv net whose logits see only the feature map inside ROWS x COLS.

    The convolution sums the colour channels (hand-set, positive), the
    crop-and-pad zeroes everything outside the window, and the dense layer
    gives class 0 positive weights, so the class-0 score grows with the
    brightness inside the window and ignores the rest of the image. ``aux``
    adds an auxiliary head on the whole convolution (as a list of outputs, or
    a dict when ``named``).
    """
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")
    x = conv(inputs)
    crop = ((ROWS[0], SIZE - 1 - ROWS[1]), (COLS[0], SIZE - 1 - COLS[1]))
    window = keras.layers.Cropping2D(crop, name="window_crop")(x)
    x = keras.layers.ZeroPadding2D(crop, name="window")(window)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    dense = keras.layers.Dense(num_classes, name="logits")
    logits = dense(pooled)
    outputs = [keras.layers.Activation("softmax", name="predictions")(logits)]
    if aux:
        aux_logits = keras.layers.Dense(num_classes, name="aux_logits")(
            keras.layers.GlobalAveragePooling2D(name="aux_pool")(conv.output)
        )
        outputs.append(keras.layers.Activation("softmax", name="aux1_predictions")(aux_logits))
    if named:  # Like Inception v1's training model: a dict of outputs keyed by name.
        outputs = {"predictions": outputs[0], "aux1_predictions": outputs[1]}
    model = keras.Model(inputs, outputs if aux else outputs[0])
    kernel = np.zeros((3, 3, 3, 4), np.float32)
    kernel[1, 1, :, :] = 1.0 / 255.0
    conv.set_weights([kernel, np.zeros(4, np.float32)])
    weights = np.full((4, num_classes), -1.0, np.float32)
    weights[:, 0] = 2.0
    dense.set_weights([weights, np.zeros(num_classes, np.float32)])
    return model


def _images(count=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(count, SIZE, SIZE, 3)).astype(np.float32)
    # A bright patch outside the window: a method that ignores the gradients'
    # location would point at it.
    images[:, 22:30, 2:10, :] = 255.0
    return images


def _assert_peaks_in_window(maps):
    for heatmap in maps:
        y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        assert ROWS[0] <= y <= ROWS[1] and COLS[0] <= x <= COLS[1], (y, x)


def test_choose_layer_is_last_spatial_map_before_pooling():
    model = _window_model()
    assert layers.choose_layer(model) == "window"
    assert gradcam.choose_layer(model) == "window"
    assert layers.spatial_layers(model) == ["conv", "window_crop", "window"]


def test_choose_layer_ignores_auxiliary_heads():
    model = _window_model(aux=True)
    assert layers.main_output_index(model) == 0
    assert layers.choose_layer(model) == "window"


def test_check_layer_errors():
    model = _window_model()
    with pytest.raises(ValueError, match="Unknown layer 'nope'"):
        layers.check_layer(model, "nope")
    with pytest.raises(ValueError, match="spatial"):
        layers.check_layer(model, "pool")
    assert layers.check_layer(model, "conv") == "conv"


def test_model_without_spatial_map_is_rejected():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="predictions")(inputs))
    with pytest.raises(ValueError, match="no layer with a spatial"):
        layers.choose_layer(model)


@pytest.mark.parametrize("method", gradcam.METHODS)
def test_every_method_peaks_inside_the_window(method):
    model = _window_model()
    maps = gradcam.explain(model, _images(), [0, 0], method=method, max_maps=4)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-3)
    _assert_peaks_in_window(maps)
    # Nothing outside the window can matter: the map there is (near) zero.
    outside = maps.copy()
    outside[:, ROWS[0] : ROWS[1] + 1, COLS[0] : COLS[1] + 1] = 0.0
    assert outside.max() < 0.2


def test_layer_override_layercam_uses_gradient_location():
    # On the convolution (before the window), activations are everywhere and
    # brightest on the outside patch; LayerCAM weights them by the local
    # gradient, which is zero outside the window.
    model = _window_model()
    explainer = gradcam.Explainer(model, method="layercam", layer="conv")
    assert explainer.layer == "conv"
    _assert_peaks_in_window(explainer(_images(), [0, 0]))


def test_gradcam_on_conv_layer_follows_activation_not_window():
    # Grad-CAM averages the gradients over space, so on the convolution its map
    # follows the activations: the bright patch outside the window wins. This
    # pins that the layer override really changes the layer used.
    model = _window_model()
    maps = gradcam.explain(model, _images(), [0, 0], layer="conv")
    y, x = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert 22 <= y <= 29 and 2 <= x <= 9


def test_multi_output_model_scores_only_the_main_head():
    model = _window_model(aux=True)
    maps = gradcam.explain(model, _images(), 0, method="gradcam")
    _assert_peaks_in_window(maps)
    assert model.get_layer("predictions").activation is keras.activations.softmax


@pytest.mark.parametrize("method", gradcam.METHODS)
def test_named_outputs_model_is_explained_like_its_main_output_view(method):
    model = _window_model(aux=True, named=True)
    assert model.output_names[layers.main_output_index(model)] == "predictions"
    both = gradcam.explain(model, _images(), [0, 0], method=method, max_maps=4)
    main = gradcam.explain(
        model_contract.main_output_model(model), _images(), [0, 0], method=method, max_maps=4
    )
    np.testing.assert_allclose(both, main, atol=1e-4)
    # The auxiliary head does not depend on the window layer: scoring it would give an empty map.
    _assert_peaks_in_window(both)


def test_mixed_precision_model_is_explained_in_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _window_model()
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("conv").compute_dtype == "bfloat16"
    maps = gradcam.explain(model, _images(1), [0], method="scorecam", max_maps=4)
    assert maps.dtype == np.float32 and np.isfinite(maps).all()
    _assert_peaks_in_window(maps)


def test_explainer_argument_errors():
    model = _window_model()
    with pytest.raises(ValueError, match="Unknown method 'gradcam3'"):
        gradcam.Explainer(model, method="gradcam3")
    with pytest.raises(ValueError, match="max_maps"):
        gradcam.Explainer(model, max_maps=0)
    with pytest.raises(ValueError, match="shape"):
        gradcam.Explainer(model)(np.zeros((1, 16, 16, 3), np.float32), [0])
