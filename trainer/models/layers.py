"""Custom serializable layers the models carry inside their graphs.

Input scaling lives in the model (docs/design.md, section 2) so every caller
feeds the same raw ``[0, 255]`` pixels. Built-in layers cover most of it
(``Rescaling``, ``Resizing``); what Keras lacks is written here, registered so
a saved ``.keras`` file reloads without ``custom_objects``.
"""

import keras


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
