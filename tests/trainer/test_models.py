"""One suite over every registered architecture, plus the registry and blocks.

Each full-size model is built once per module (num_classes=7, so nothing
assumes 200 classes) and shared by the tests; the Inception-ResNet-v2 cases
are marked slow.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from contracts import model as model_layers
from explain import layers as explain_layers
from trainer import export, models
from trainer.models import blocks, inception_resnet_v2

NUM_CLASSES = 7
BATCH = 2
SLOW = {"inception_resnet_v2"}

# count_params() per architecture at num_classes=7: an accidental architecture
# change fails here loudly (TF Model Garden resnet_test.py).
PARAM_COUNTS = {
    "inception_resnet_v2": 54_347_495,
    "inception_v1": 10_347_413,
    "minception": 6_948_647,
}

# Layer names other code relies on (Grad-CAM, checkpoints, the trainer).
EXPECTED_LAYERS = {
    "inception_v1": [
        "image",
        "input_centering",
        "stem_conv1_conv",
        "stem_conv1_bn",
        "stem_conv1_act",
        "inception_3a_concat",
        "inception_4d_5x5_conv",
        "aux1_fc",
        "aux1_predictions",
        "aux2_predictions",
        "inception_5b_concat",
        "avg_pool",
        "head_dropout",
        "head_logits",
        "predictions",
    ],
    "minception": [
        "image",
        "input_scaling",
        "stem_split2_b2_bn",
        "stem_output",
        "block_a_scale",
        "block_a_out",
        "reduction_concat",
        "block_b1_out",
        "block_b2_out",
        "avg_pool",
        "head_dropout",
        "head_logits",
        "predictions",
    ],
    "inception_resnet_v2": [
        "image",
        "input_resize",
        "input_scaling",
        "mixed_5b",
        "block35_10_ac",
        "mixed_6a",
        "block17_20_ac",
        "mixed_7a",
        "block8_10_conv",
        "conv_7b_ac",
        "avg_pool",
        "head_dropout",
        "head_logits",
        "predictions",
    ],
}

# Name of the last Conv2D layer in model.layers order.
LAST_CONV = {
    "inception_v1": "inception_5b_pool_proj_conv",
    "minception": "block_b2_proj_conv",
    "inception_resnet_v2": "conv_7b",
}


def _arch_params():
    names = models.list_models()
    return [pytest.param(name, marks=pytest.mark.long) if name in SLOW else name for name in names]


@pytest.fixture(scope="module")
def model_cache():
    return {}


def _get_model(cache, name):
    if name not in cache:
        cache[name] = models.build_model(name, NUM_CLASSES, weights=None, seed=0)
    return cache[name]


@pytest.fixture(params=_arch_params())
def built(request, model_cache):
    """``(name, model)`` for each registered architecture, built once."""
    return request.param, _get_model(model_cache, request.param)


def _images(model, seed=0):
    size = model.input_shape[1]
    return np.random.default_rng(seed).uniform(0, 255, (BATCH, size, size, 3)).astype("float32")


def _main(outputs):
    return outputs[models.MAIN_OUTPUT] if isinstance(outputs, dict) else outputs


def test_forward_backward(built):
    name, model = built
    labels = tf.constant([1, NUM_CLASSES - 1])
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        outputs = model(_images(model), training=True)
        heads = outputs if isinstance(outputs, dict) else {models.MAIN_OUTPUT: outputs}
        loss = tf.add_n([loss_fn(labels, probs) for probs in heads.values()])
    assert set(heads) == {models.MAIN_OUTPUT, *models.get_defaults(name).aux_outputs}
    probs = _main(outputs)
    assert probs.shape == (BATCH, NUM_CLASSES)
    assert probs.dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(probs, axis=-1), np.ones(BATCH), atol=1e-5)

    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    assert all(grad is not None for grad in grads)
    assert all(bool(tf.reduce_all(tf.math.is_finite(grad))) for grad in grads)
    logits = model.get_layer("head_logits").kernel
    before = logits.numpy()
    keras.optimizers.SGD(0.1).apply(grads, variables)
    assert not np.allclose(before, logits.numpy())


def test_save_load_roundtrip(built, tmp_path):
    _, model = built
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = _images(model, seed=1)
    expected = model(images, training=False)
    actual = loaded(images, training=False)
    if isinstance(expected, dict):
        assert set(actual) == set(expected)
        for key in expected:
            np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


def test_parameter_count_is_pinned(built):
    name, model = built
    assert name in PARAM_COUNTS, f"pin the parameter count of new architecture {name!r}"
    assert model.count_params() == PARAM_COUNTS[name]


def test_layer_names_are_stable(built):
    name, model = built
    names = {layer.name for layer in model.layers}
    missing = [expected for expected in EXPECTED_LAYERS[name] if expected not in names]
    assert not missing
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs[-1] == LAST_CONV[name]
    # Grad-CAM's layer: a spatial map that the main output depends on.
    feature = model.get_layer(models.get_defaults(name).feature_layer)
    assert len(feature.output.shape) == 4 and feature.output.shape[1] >= 2
    probe = keras.Model(model.input, [feature.output, model.get_layer(models.MAIN_OUTPUT).output])
    with tf.GradientTape() as tape:
        features, probs = probe(_images(model), training=False)
        score = tf.reduce_sum(probs[:, 0])
    assert features.shape[0] == BATCH and probs.shape == (BATCH, NUM_CLASSES)
    grads = tape.gradient(score, features)
    assert grads is not None and grads.shape == features.shape


def test_main_output_model(built):
    name, model = built
    main = models.main_output_model(model)
    assert len(main.outputs) == 1
    assert main.layers[-1].name == models.MAIN_OUTPUT
    assert main.output_shape == (None, NUM_CLASSES)
    assert main.get_layer("head_logits").kernel is model.get_layer("head_logits").kernel
    aux = models.get_defaults(name).aux_outputs
    if not aux:
        assert main is model
        return
    assert sorted(model.output_names) == sorted([models.MAIN_OUTPUT, *aux])
    images = _images(model, seed=2)
    np.testing.assert_allclose(
        main(images, training=False), model(images, training=False)[models.MAIN_OUTPUT], atol=1e-6
    )


def test_main_output_model_rejects_model_without_predictions():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(inputs))
    with pytest.raises(ValueError, match="no 'predictions' layer"):
        models.main_output_model(model)


def test_inception_v1_has_three_outputs_with_book_dropouts(model_cache):
    model = _get_model(model_cache, "inception_v1")
    assert len(model.outputs) == 3
    assert model.get_layer("head_dropout").rate == pytest.approx(0.4)
    assert model.get_layer("aux1_dropout").rate == pytest.approx(0.7)
    assert model.get_layer("aux2_dropout").rate == pytest.approx(0.7)


def test_inception_v1_centers_each_image(model_cache):
    model = _get_model(model_cache, "inception_v1")
    centered = keras.Model(model.input, model.get_layer("input_centering").output)
    images = _images(model)
    images[1] *= 0.25  # a darker image: its own mean, not the batch's, is removed
    out = centered(images).numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), np.zeros(BATCH), atol=1e-3)
    np.testing.assert_allclose(out, images - images.mean(axis=(1, 2, 3), keepdims=True), atol=1e-3)


def test_minception_scales_to_unit_range(model_cache):
    model = _get_model(model_cache, "minception")
    assert model.input_shape == (None, 56, 56, 3)
    scaled = keras.Model(model.input, model.get_layer("input_scaling").output)
    images = np.zeros((BATCH, 56, 56, 3), "float32")
    images[1] = 255.0
    out = scaled(images).numpy()
    np.testing.assert_allclose(out[0], -1.0)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)


def test_per_image_centering_layer_serializes():
    layer = model_layers.PerImageCentering(name="center")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, model_layers.PerImageCentering)
    assert restored.name == "center"
    assert restored.dtype_policy.compute_dtype == "float32"
    images = np.random.default_rng(3).uniform(0, 255, (3, 5, 5, 3)).astype("float32")
    np.testing.assert_allclose(restored(images).numpy().mean(axis=(1, 2, 3)), np.zeros(3), atol=1e-4)


@pytest.mark.long  # builds Inception-ResNet-v2
def test_inception_resnet_v2_resizes_on_device_and_is_flat(model_cache):
    model = _get_model(model_cache, "inception_resnet_v2")
    assert model.input_shape == (None, 64, 64, 3)
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert isinstance(model.get_layer("conv_7b_ac"), keras.layers.Activation)
    scaled = keras.Model(model.input, model.get_layer("input_scaling").output)
    images = _images(model)
    out = scaled(images).numpy()
    assert out.shape == (BATCH, 224, 224, 3)
    expected = keras.applications.inception_resnet_v2.preprocess_input(
        tf.image.resize(images, (224, 224), method="bilinear").numpy()
    )
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6


@pytest.mark.long  # builds Inception-ResNet-v2
def test_inception_resnet_v2_backbone_size_sets_the_resize_and_keeps_the_weights(model_cache):
    default = _get_model(model_cache, "inception_resnet_v2")
    small = models.build_model("inception_resnet_v2", NUM_CLASSES, weights=None, backbone_size=75, seed=1)
    scaled = keras.Model(small.input, small.get_layer("input_scaling").output)
    assert scaled(_images(small)).shape == (BATCH, 75, 75, 3)
    # The same variables, shape for shape: pretrained weights load at any backbone side.
    assert [tuple(v.shape) for v in small.weights] == [tuple(v.shape) for v in default.weights]
    assert small(_images(small)).shape == (BATCH, NUM_CLASSES)
    # Grad-CAM of the export: the usual layer at the default side, the last spatial one at 75.
    assert export.gradcam_layer("inception_resnet_v2", default) == ("conv_7b_ac", None)
    layer, warning = export.gradcam_layer("inception_resnet_v2", small)
    assert small.get_layer("conv_7b_ac").output.shape[1:3] == (1, 1)
    assert layer == explain_layers.spatial_layers(small)[-1] and small.get_layer(layer).output.shape[1] > 1
    size = small.get_layer(layer).output.shape[1]
    assert "the feature map of 'conv_7b_ac' is 1x1" in warning and f"still spatial ({size}x{size})" in warning


@pytest.mark.long  # builds Inception-ResNet-v2
def test_set_backbone_trainable_freezes_all_but_head(model_cache):
    model = _get_model(model_cache, "inception_resnet_v2")
    total = len(model.trainable_weights)
    head = model.get_layer("head_logits")
    try:
        inception_resnet_v2.set_backbone_trainable(model, False)
        assert {id(v) for v in model.trainable_weights} == {id(head.kernel), id(head.bias)}
        assert not model.get_layer("conv_7b_bn").trainable
        assert len(inception_resnet_v2.backbone_layers(model)) == len(model.layers) - 3
    finally:
        inception_resnet_v2.set_backbone_trainable(model, True)
    assert len(model.trainable_weights) == total


@pytest.mark.long  # builds Inception-ResNet-v2
@pytest.mark.parametrize("fmt", ["keras_weights", "legacy_h5"])
def test_inception_resnet_v2_loads_local_weights_file(model_cache, tmp_path, fmt):
    source = _get_model(model_cache, "inception_resnet_v2")
    backbone = models.backbone_model(source)
    if fmt == "keras_weights":
        path = str(tmp_path / "backbone.weights.h5")
        backbone.save_weights(path)
    else:
        # A legacy HDF5 file, loaded in topological order like Keras' *_notop.h5.
        path = str(tmp_path / "backbone.h5")
        keras.saving.save_model(backbone, path)
    model = models.build_model("inception_resnet_v2", NUM_CLASSES, weights=path, seed=1)
    expected = models.backbone_model(source).weights
    actual = models.backbone_model(model).weights
    assert len(actual) == len(expected) > 0
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_inception_resnet_v2_rejects_missing_weights_file(tmp_path):
    with pytest.raises(ValueError, match="existing weights file"):
        models.build_model("inception_resnet_v2", NUM_CLASSES, weights=str(tmp_path / "nope.h5"))


@pytest.mark.parametrize("name", _arch_params())
def test_mixed_precision_keeps_float32_outputs(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build_model(name, NUM_CLASSES, weights=None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer in [*convs, model.get_layer("head_logits")]:
        assert layer.compute_dtype == "float16", layer.name
        assert all(variable.dtype == "float32" for variable in layer.weights), layer.name
    # Only the softmax outputs are float32: the loss and metrics stay accurate.
    assert model.get_layer(models.MAIN_OUTPUT).compute_dtype == "float32"
    outputs = model.outputs
    assert all(output.dtype == "float32" for output in outputs)


def test_defaults_table():
    table = {name: models.get_defaults(name) for name in models.list_models()}
    assert set(table) == {"inception_v1", "minception", "inception_resnet_v2"}
    assert [table[n].input_size for n in sorted(table)] == [64, 64, 56]
    assert table["inception_v1"].augmentation == "book"
    assert table["minception"].augmentation == "crop"
    assert table["inception_resnet_v2"].augmentation in ("book", "none")
    assert table["inception_v1"].learning_rate == table["minception"].learning_rate == 1e-3
    assert table["inception_resnet_v2"].learning_rate == 1e-4
    assert table["inception_v1"].aux_loss_weight == 0.3
    assert table["minception"].aux_loss_weight == table["inception_resnet_v2"].aux_loss_weight == 0.0
    assert [table[n].early_stopping_patience for n in sorted(table)] == [5, 5, 10]
    assert table["inception_resnet_v2"].weights == "imagenet"
    assert all(d.optimizer == "adam" and d.batch_size == 128 and d.epochs == 50 for d in table.values())
    assert all(d.lr_plateau_factor == 0.1 and d.lr_plateau_patience == 5 for d in table.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        table["minception"].dropout = 0.1


def test_build_options_override_defaults_and_seed_is_reproducible():
    # NumPy integers are accepted: class counts often come from arrays.
    classes, size = np.int64(NUM_CLASSES), np.int64(64)
    model = models.build_model("minception", classes, input_size=size, dropout=0.2, seed=3)
    assert model.input_shape == (None, 64, 64, 3)
    assert model.output_shape == (None, NUM_CLASSES)
    assert model.get_layer("head_dropout").rate == pytest.approx(0.2)
    again = models.build_model("minception", NUM_CLASSES, input_size=64, dropout=None, seed=3, sync_bn=True)
    assert again.get_layer("head_dropout").rate == pytest.approx(0.5)
    # sync_bn: every batch norm computes its statistics over all replicas (test_optimizers runs one).
    norms = [(a, b) for a, b in zip(model.layers, again.layers, strict=True) if hasattr(a, "synchronized")]
    assert len(norms) > 10 and not any(a.synchronized for a, _ in norms)
    assert all(b.synchronized for _, b in norms)
    for first, second in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(first.numpy(), second.numpy())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet50"}, r"unknown model 'resnet50'; known models: inception_resnet_v2, inception_v1"),
        ({"depth": 3}, r"unknown build options \['depth'\]"),
        ({"aux_dropout": 0.5}, r"aux_dropout=0.5 does not apply to 'minception'"),
        ({"num_classes": 1}, r"num_classes must be an integer >= 2, got 1"),
        ({"input_size": 8}, r"input_size for 'minception' must be an integer >= 32, got 8"),
        ({"dropout": 1.5}, r"dropout for 'minception' must be in \[0, 1\), got 1.5"),
        ({"backbone_size": 96}, r"backbone_size=96 does not apply to 'minception'"),
        (
            {"name": "inception_resnet_v2", "weights": None, "backbone_size": 74},
            r"backbone_size for 'inception_resnet_v2' must be an integer >= 75, got 74",
        ),
    ],
)
def test_build_model_rejects_bad_arguments(kwargs, message):
    arguments = {"name": "minception", "num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(ValueError, match=message):
        models.build_model(**arguments)


def test_registry_rejects_duplicates_and_unknown_names():
    assert models.list_models() == sorted(models.list_models())
    defaults = models.get_defaults("minception")
    with pytest.raises(ValueError, match="'minception' is already registered"):
        models.register_model("minception", defaults)(lambda num_classes, *, input_size, dropout: None)
    with pytest.raises(ValueError, match=r"unknown options \['depth'\]"):
        models.register_model("test_only_bad_options", defaults)(lambda num_classes, *, depth: None)
    with pytest.raises(ValueError, match="must be an ArchDefaults"):
        models.register_model("test_only_bad_defaults", {"input_size": 64})
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.get_defaults("nope")
    assert "test_only_bad_options" not in models.list_models()


def test_conv_bn_act_names_and_linear_variant():
    inputs = keras.Input((8, 8, 3))
    x = blocks.conv_bn_act(inputs, 4, 3, strides=2, name="unit")
    y = blocks.conv_bn_act(x, 5, (1, 7), activation=None, name="linear")
    model = keras.Model(inputs, y)
    names = [layer.name for layer in model.layers]
    assert names[1:] == ["unit_conv", "unit_bn", "unit_act", "linear_conv", "linear_bn"]
    assert model.get_layer("unit_conv").use_bias is False
    assert model.output_shape == (None, 4, 4, 5)
    with pytest.raises(ValueError, match="needs a layer name prefix"):
        blocks.conv_bn_act(inputs, 4, 3, name="")
