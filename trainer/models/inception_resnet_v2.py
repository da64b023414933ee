"""Transfer learning on Keras' Inception-ResNet-v2 (the book's section 7.3).

The book upsizes images to 224x224 on the host and wraps the pretrained
network as one layer of a ``Sequential`` model. Here the resize and the
network's own ``preprocess_input`` scaling (``x / 127.5 - 1``) are layers on
the device, and the backbone's layers hang directly off our input
(``input_tensor=``), so the model is ONE flat functional graph: Grad-CAM can
reach ``conv_7b_ac`` by name and the head/backbone split is a list of layers.

Two-phase fine-tuning: :func:`set_backbone_trainable` freezes everything but
the ``head_*``/``predictions`` layers for the warm-up epochs, then unfreezes.
"""

import os

import keras

from contracts import model as model_contract
from contracts import storage
from trainer.models import blocks, registry

NAME = "inception_resnet_v2"

# Input side the ImageNet weights were trained around (the book uses 224).
BACKBONE_SIZE = 224

# Our name for the backbone's global average pooling. Keras' pooling="avg"
# would add the same layer under a session-dependent automatic name.
BACKBONE_OUTPUT = "avg_pool"

DEFAULTS = registry.ArchDefaults(
    input_size=64,
    # The book fine-tunes with the same augmenting generator as Inception v1:
    # 55M parameters over 90k images overfit fast (train 96% vs valid 74% in
    # the book), so the pretrained network still needs augmented data.
    augmentation="book",
    learning_rate=1e-4,
    dropout=0.4,
    early_stopping_patience=5,
    weights="imagenet",
    feature_layer="conv_7b_ac",
    fine_tunable=True,
)


@registry.register_model(NAME, DEFAULTS)
def build(num_classes, *, input_size, dropout, weights):
    """Builds Inception-ResNet-v2 with a new softmax head as one flat graph.

    Args:
        num_classes: Number of classes.
        input_size: Side of the raw input, resized to 224 inside the model.
        dropout: Dropout before the new head.
        weights: ``"imagenet"`` (downloaded by Keras), ``None`` or ``"none"``
            (random initialization), or the path of a weights file of the
            no-top backbone: a Keras ``.weights.h5`` (e.g. written by
            ``backbone_model(model).save_weights(path)``) or a legacy ``.h5``
            such as Keras' ``..._notop.h5``. ``gs://`` paths are copied first.

    Returns:
        A single-output model ending in the ``predictions`` layer.

    Raises:
        ValueError: If ``weights`` is neither of the above nor an existing file.
    """
    weights = _check_weights(weights)
    inputs = blocks.image_input(input_size)
    x = keras.layers.Resizing(BACKBONE_SIZE, BACKBONE_SIZE, interpolation="bilinear", name="input_resize")(
        inputs
    )
    x = blocks.scale_to_unit_range(x)
    backbone = keras.applications.InceptionResNetV2(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_tensor=x,
        pooling=None,
    )
    if weights not in ("imagenet", None):
        _load_backbone_weights(backbone, weights)
    x = keras.layers.GlobalAveragePooling2D(name=BACKBONE_OUTPUT)(backbone.output)
    outputs = blocks.softmax_head(
        x, num_classes, dropout, prefix=blocks.HEAD_PREFIX, output_name=model_contract.MAIN_OUTPUT
    )
    return keras.Model(inputs, outputs, name=NAME)


def is_head_layer(layer):
    """Whether ``layer`` belongs to the new classification head."""
    return layer.name == model_contract.MAIN_OUTPUT or layer.name.startswith(f"{blocks.HEAD_PREFIX}_")


def backbone_layers(model):
    """The layers of ``model`` that are not part of the classification head."""
    return [layer for layer in model.layers if not is_head_layer(layer)]


def set_backbone_trainable(model, trainable):
    """Freezes (``False``) or unfreezes (``True``) all layers but the head.

    A frozen BatchNormalization layer also runs in inference mode, keeping the
    pretrained statistics during the warm-up. Rebuild any compiled train step
    afterwards: the set of trainable variables changes.

    Args:
        model: A model whose head layers are named ``head_*``/``predictions``.
        trainable: Whether the backbone is trained.
    """
    for layer in backbone_layers(model):
        layer.trainable = trainable


def backbone_model(model):
    """The no-top backbone of ``model`` (input to ``avg_pool``), sharing weights.

    Its ``save_weights(path)`` writes a file that ``build_model(...,
    weights=path)`` loads.
    """
    return keras.Model(model.input, model.get_layer(BACKBONE_OUTPUT).output, name=f"{model.name}_backbone")


def _check_weights(weights):
    if isinstance(weights, str) and weights.lower() == "none":
        return None
    if weights in ("imagenet", None):
        return weights
    if not isinstance(weights, str | os.PathLike) or not storage.exists(os.fspath(weights)):
        raise ValueError(
            f"weights for {NAME!r} must be 'imagenet', None or an existing weights file, got {weights!r}"
        )
    return os.fspath(weights)


def _load_backbone_weights(backbone, path):
    # The backbone's topology is exactly the no-top network, so weights load in
    # order and any mismatch is an error rather than a silently random layer.
    with storage.local_file(path) as local:
        backbone.load_weights(local)
