"""What a saved model carries: its main output and the custom layers it needs.

Every model names its main (softmax) output layer :data:`MAIN_OUTPUT`; the
trainer, the export, prediction and explanations find it by that name.

Input scaling lives in the model (docs/design.md, section 2) so every caller
feeds the same raw ``[0, 255]`` pixels. Built-in layers cover most of it
(``Rescaling``, ``Resizing``); what Keras lacks is written here, registered so
a saved ``.keras`` file reloads without ``custom_objects`` wherever this
module is imported (the job-dir reader imports it before loading).
"""

import keras

# Output layer name of the main classification head (see docs/design.md).
MAIN_OUTPUT = "predictions"


def main_output_model(model):
    """Returns the single-output model of the ``predictions`` head.

    The returned model shares layers and weights with ``model``; use it for
    metrics, checkpoints of the serving graph, export and explanations.

    Args:
        model: A functional classification model.

    Returns:
        ``model`` itself when it has one output, else a new functional model
        from the same inputs to the ``predictions`` layer.

    Raises:
        ValueError: If ``model`` has no ``predictions`` layer.
    """
    names = [layer.name for layer in model.layers]
    if MAIN_OUTPUT not in names:
        raise ValueError(f"model {model.name!r} has no {MAIN_OUTPUT!r} layer")
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.input, model.get_layer(MAIN_OUTPUT).output, name=f"{model.name}_main")


@keras.saving.register_keras_serializable(package="tiny_inception")
class PerImageCentering(keras.layers.Layer):
    """Subtracts each image's mean over height, width and channels.

    The book's ``samplewise_center``: ``x - mean(x[i])`` per example. It runs
    in float32 even under a mixed-precision policy, because the mean of
    thousands of values up to 255 is inaccurate in float16.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        return inputs - keras.ops.mean(inputs, axis=(1, 2, 3), keepdims=True)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config()
