"""Grad-CAM in plain TensorFlow ops, so a SavedModel can serve heatmaps.

:mod:`explain.gradcam` computes maps through tf-keras-vis, which runs eagerly
and finishes in NumPy and SciPy: nothing of it can be traced into a graph. This
module repeats tf-keras-vis' ``Gradcam`` (as :class:`explain.gradcam.Explainer`
calls it, with ``ReplaceToLinear``) step by step in TensorFlow, inside one
``tf.GradientTape``:

* Score: the pre-softmax logit of the class. ``ReplaceToLinear`` sets the
  output layer's activation to linear, so tf-keras-vis differentiates the
  logit, not the probability (whose gradient vanishes as the softmax
  saturates). Here the logit is read off the graph instead of editing the
  model: the input of an ``Activation`` output layer (every registered
  architecture ends in ``Dense`` logits then ``Activation("softmax")``), or
  ``inputs @ kernel + bias`` of a ``Dense`` output layer with a softmax. A
  log-probability would be simpler but is a different score (its gradient
  subtracts the softmax-weighted gradients of every class), so it is not used.
* Weights: the spatial mean of the score's gradients with respect to the
  layer's feature maps; map: ``relu(sum_c w_c A_c)``.
* Upsampling: ``scipy.ndimage.zoom(order=1)`` maps the corners of the feature
  map onto the corners of the image (``grid_mode=False``), which is bilinear
  resizing with ``align_corners=True`` (``tf.raw_ops.ResizeBilinear``); the two
  agree to float32 rounding (about 1e-7).
* Normalisation: ``(cam - min) / (max - min + 1e-7)`` per image, as
  ``tf_keras_vis.utils.normalize`` with Keras' epsilon. The maximum is then 1
  (short of it by the epsilon's share only when the map's range is that small)
  and a map that nothing supports is all zeros.

Hand it a float32 model: the maps are computed in float32 whatever the
layers compute in, but a ``mixed_bfloat16`` model's gradients are rounded
first (:func:`explain.gradcam.float32_clone` makes a float32 copy).
"""

import keras
import tensorflow as tf

from explain import layers

# tf_keras_vis.utils.normalize divides by (max - min + keras.backend.epsilon()).
EPSILON = 1e-7


def _output_layer(model):
    return model.get_layer(model.output_names[layers.main_output_index(model)])


def _logits_fn(head):
    """Returns ``fn(head_inputs) -> logits`` for the model's output layer ``head``."""
    if isinstance(head, keras.layers.Activation):
        return lambda inputs: inputs
    if isinstance(head, keras.layers.Dense):

        def dense_logits(inputs):
            logits = tf.matmul(inputs, tf.cast(head.kernel, inputs.dtype))
            return logits + tf.cast(head.bias, inputs.dtype) if head.use_bias else logits

        return dense_logits
    raise ValueError(
        f"Cannot find the logits of output layer {head.name!r} ({type(head).__name__}): "
        "expected an Activation layer or a Dense layer."
    )


def logit_view(model, layer):
    """Returns a model sharing ``model``'s weights that also exposes what Grad-CAM needs.

    Args:
        model: A functional Keras model (see :class:`GradCam`).
        layer: Name of the target layer.

    Returns:
        ``(view, logits_fn)``: ``view(pixels)`` returns ``[feature maps of
        layer, inputs of the output layer, main output]`` in one forward pass,
        and ``logits_fn(inputs of the output layer)`` returns the logits.
    """
    head = _output_layer(model)
    outputs = [model.get_layer(layer).output, head.input, model.outputs[layers.main_output_index(model)]]
    return keras.Model(model.inputs, outputs, name=f"{model.name}_gradcam_view"), _logits_fn(head)


def upsample(cams, size):
    """Resizes ``[B, h, w]`` maps to ``[B, H, W]`` the way ``scipy.ndimage.zoom(order=1)`` does."""
    resized = tf.raw_ops.ResizeBilinear(
        images=cams[..., tf.newaxis], size=size, align_corners=True, half_pixel_centers=False
    )
    return resized[..., 0]


def normalize(cams):
    """Min-max scales each ``[H, W]`` map of ``[B, H, W]`` to ``[0, 1]`` (tf-keras-vis' rule)."""
    low = tf.reduce_min(cams, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(cams, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((cams - low) / (high - low + EPSILON), 0.0, 1.0)


def peak(heatmaps):
    """Returns int32 ``[B, 2]``: ``(y, x)`` of each map's maximum, the first in row-major order on ties.

    The first-occurrence rule is NumPy's ``argmax``; ``tf.argmax`` leaves ties unspecified.
    """
    width = tf.shape(heatmaps)[2]
    flat = tf.reshape(heatmaps, [tf.shape(heatmaps)[0], -1])
    positions = tf.range(tf.shape(flat)[1])[tf.newaxis, :]
    at_max = flat >= tf.reduce_max(flat, axis=1, keepdims=True)
    first = tf.reduce_min(tf.where(at_max, positions, tf.shape(flat)[1]), axis=1)
    return tf.cast(tf.stack([first // width, first % width], axis=1), tf.int32)


class GradCam:
    """A traceable Grad-CAM of one model and one layer.

    Call it inside or outside a ``tf.function``; it holds no state besides the
    model's weights, so an exported endpoint can close over it.

    Args:
        model: A functional Keras model taking ``[B, H, W, C]`` images; single
            output, or several with the main one named ``predictions``, whose
            main output layer is an ``Activation`` or a ``Dense`` layer.
        layer: Name of the target layer; ``None`` picks :func:`explain.layers.choose_layer`.

    Raises:
        ValueError: For an unusable layer or an output layer without readable logits.
    """

    def __init__(self, model, layer=None):
        self.layer = layers.check_layer(model, layer) if layer else layers.choose_layer(model)
        self.input_size = tuple(int(d) for d in model.inputs[0].shape[1:3])
        self._view, self._logits = logit_view(model, self.layer)

    def __call__(self, pixels, class_indices=None):
        """Explains ``class_indices`` (default: each image's most probable class) on ``pixels``.

        Args:
            pixels: float32 ``[B, H, W, C]`` as the model takes them.
            class_indices: Optional int ``[B]`` classes to explain.

        Returns:
            A dict of tensors: ``probabilities`` ``[B, N]`` (the main output),
            ``classes`` int32 ``[B]`` (the explained classes), ``heatmap``
            float32 ``[B, H, W]`` in ``[0, 1]`` and ``peak`` int32 ``[B, 2]``.
        """
        pixels = tf.convert_to_tensor(pixels, tf.float32)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            # Watching the input, as tf-keras-vis does, records the whole forward
            # pass even when every weight is frozen (a fine-tuning warm-up).
            tape.watch(pixels)
            features, head_inputs, probabilities = self._view(pixels, training=False)
            probabilities = tf.cast(probabilities, tf.float32)
            if class_indices is None:
                # top_k breaks ties towards the lower index, as the serving top-5 does.
                class_indices = tf.math.top_k(probabilities, k=1).indices[:, 0]
            class_indices = tf.cast(class_indices, tf.int32)
            logits = tf.cast(self._logits(head_inputs), tf.float32)
            scores = tf.gather(logits, class_indices, axis=1, batch_dims=1)
        # Each image's score depends on its own features only (inference mode),
        # so the gradient of the sum holds every image's own gradient.
        grads = tf.cast(tape.gradient(scores, features), tf.float32)
        features = tf.cast(features, tf.float32)
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))
        heatmaps = normalize(upsample(cams, self.input_size))
        return {
            "probabilities": probabilities,
            "classes": class_indices,
            "heatmap": heatmaps,
            "peak": peak(heatmaps),
        }
