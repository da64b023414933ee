"""Which layer an explanation looks at, and which output it scores.

Grad-CAM and its relatives weight the feature maps of one layer. The natural
choice is the last layer whose output is still a spatial map (``[B, H, W, C]``
with ``H, W > 1``) before global pooling: it has the most semantic features
and still knows *where* they are. Only layers that feed the main output count,
so the auxiliary heads of Inception v1 are never chosen.
"""

import keras

from contracts.model import MAIN_OUTPUT


def main_output_index(model):
    """Returns the position of the main output among ``model.outputs``.

    The main output is the one produced by the layer named ``predictions``; a
    model with a single output has it at position 0 whatever its name.

    Raises:
        ValueError: When a multi-output model has no ``predictions`` output.
    """
    if len(model.outputs) == 1:
        return 0
    names = list(model.output_names)
    if MAIN_OUTPUT not in names:
        raise ValueError(f"The model has outputs {names} but none named {MAIN_OUTPUT!r}.")
    return names.index(MAIN_OUTPUT)


def _main_branch(model):
    """Returns a model holding only the layers the main output depends on."""
    if len(model.outputs) == 1:
        return model
    # A functional model keeps only the ancestors of its outputs, which drops
    # the auxiliary heads without walking Keras' private graph structures.
    return keras.Model(model.inputs, model.outputs[main_output_index(model)])


def _spatial_shape(layer):
    """Returns ``(H, W)`` of a layer's 4-D output, or ``None`` when it has none."""
    if isinstance(layer, keras.layers.InputLayer):
        return None
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        # Layers called more than once have no single output tensor.
        return None
    if len(shape) != 4:
        return None
    return shape[1], shape[2]


def spatial_layers(model):
    """Lists the names of the main branch's layers with a spatial map (H, W > 1), in graph order."""
    names = []
    for layer in _main_branch(model).layers:
        hw = _spatial_shape(layer)
        if hw is not None and all(d is not None and d > 1 for d in hw):
            names.append(layer.name)
    return names


def choose_layer(model):
    """Returns the name of the layer an explanation should use by default.

    It is the last layer in graph order whose output is a 4-D spatial feature
    map (``H, W > 1``) and that feeds the main output: for a CNN, the last
    convolutional block before global pooling.

    Raises:
        ValueError: When the model has no such layer.
    """
    names = spatial_layers(model)
    if not names:
        raise ValueError("The model has no layer with a spatial feature map (4-D output, H and W > 1).")
    return names[-1]


def check_layer(model, name):
    """Validates a user-chosen layer name and returns it.

    Raises:
        ValueError: When the model has no layer of that name, or its output is
            not a 4-D spatial map feeding the main output.
    """
    try:
        model.get_layer(name)
    except ValueError:
        raise ValueError(f"Unknown layer {name!r}: the model has no layer of that name.") from None
    if name not in spatial_layers(model):
        raise ValueError(
            f"Layer {name!r} has no spatial feature map feeding the main output "
            "(a 4-D output with H and W > 1 is required)."
        )
    return name
