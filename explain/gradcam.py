"""Class activation maps through tf-keras-vis: the only module that imports it.

tf-keras-vis 0.8.7 runs on Keras 3 (``tf.keras`` is Keras 3 under TF 2.21)
with two adaptations made here instead of in the library:

* The model is cloned in float32 before it is handed over. tf-keras-vis only
  recognises ``float16`` mixed precision, so a ``mixed_bfloat16`` model fails
  inside Score-CAM's ``batch_dot``; explanations in float32 are also more
  precise. The clone also keeps the caller's model untouched by
  ``ReplaceToLinear``, which rewrites output activations in place.
* Score-CAM calls ``model.predict`` with Keras' default progress bar and a list
  where the model expects a tensor; both only print noise, which is silenced
  for the duration of the call.

For multi-output models (Inception v1's training model) only the main output
``predictions`` is scored; every other output gets an ``InactiveScore``.

``gradcam`` itself runs through :mod:`explain.tfcam` by default: the same
algorithm as tf-keras-vis' ``Gradcam`` step by step (maps agree to about
1e-6, which a test checks on every architecture), traced once into a
``tf.function`` instead of run eagerly and finished in NumPy. That is written
by hand because it is measurably faster: ``benchmarks/explain.py`` prints the
ratio. ``compiled=False`` keeps tf-keras-vis for it too.
"""

import contextlib
import warnings

import keras
import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore, InactiveScore

from explain import layers, tfcam

_VISUALIZERS = {
    "gradcam": Gradcam,
    "gradcam++": GradcamPlusPlus,
    "scorecam": Scorecam,
    "layercam": Layercam,
}
METHODS = tuple(_VISUALIZERS)
DEFAULT_METHOD = "gradcam"


def check_method(method):
    """Returns ``method`` when it is one of :data:`METHODS`, else raises ``ValueError``."""
    if method not in _VISUALIZERS:
        raise ValueError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}.")
    return method


def _float32_layer(layer):
    config = layer.get_config()
    if "dtype" in config:
        config["dtype"] = "float32"
    return layer.__class__.from_config(config)


def float32_clone(model):
    """Returns a copy of ``model`` with the same weights whose layers all compute in float32.

    Several outputs come back as a list in ``model.outputs`` order: Score-CAM
    reads ``predict``'s result as a list, not as the dict a model built with
    named outputs returns.
    """
    clone = keras.models.clone_model(model, clone_function=_float32_layer)
    clone.set_weights(model.get_weights())
    if len(clone.outputs) > 1:
        clone = keras.Model(clone.inputs, list(clone.outputs), name=clone.name)
    return clone


@contextlib.contextmanager
def _quiet():
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        if interactive:
            keras.config.enable_interactive_logging()


class Explainer:
    """Computes class activation maps of one model with one method and one layer.

    Building an explainer clones the model (once), so reuse it across batches.

    Args:
        model: A functional Keras model taking ``[B, H, W, C]`` images; single
            output, or several with the main one named ``predictions``.
        method: One of :data:`METHODS`.
        layer: Name of the layer whose feature maps are weighted; ``None``
            picks :func:`explain.layers.choose_layer`.
        max_maps: Score-CAM only: at most this many feature maps (those of
            highest variance) are scored, the "faster Score-CAM" variant.
        batch_size: Score-CAM only: batch size of its masked forward passes.
        compiled: ``gradcam`` only: compute the maps with :class:`explain.tfcam.GradCam`
            in a ``tf.function`` (the default) instead of tf-keras-vis.

    Raises:
        ValueError: For an unknown method or an unusable layer.
    """

    def __init__(self, model, method=DEFAULT_METHOD, layer=None, max_maps=64, batch_size=32, compiled=True):
        self.method = check_method(method)
        self.layer = layers.check_layer(model, layer) if layer else layers.choose_layer(model)
        if max_maps < 1:
            raise ValueError(f"max_maps must be >= 1, got {max_maps}")
        self._main = layers.main_output_index(model)
        self._num_outputs = len(model.outputs)
        self._batch_size = batch_size
        clone = float32_clone(model)
        channels = clone.get_layer(self.layer).output.shape[-1]
        self.max_maps = min(max_maps, channels)
        self.input_shape = tuple(model.inputs[0].shape[1:])
        self._compiled = None
        if method == "gradcam" and compiled:
            cam = tfcam.GradCam(clone, self.layer)
            self._compiled = tf.function(
                lambda pixels, classes: cam(pixels, classes)["heatmap"], autograph=False
            )
            return
        self._visualizer = _VISUALIZERS[method](clone, model_modifier=ReplaceToLinear(), clone=False)

    def __call__(self, images, class_indices):
        """Explains ``class_indices`` on ``images``.

        Args:
            images: ``[B, H, W, C]`` float32 raw pixels as the model takes them.
            class_indices: ``B`` class indices (or one, used for every image).

        Returns:
            ``np.ndarray`` ``[B, H, W]`` float32 in ``[0, 1]``, one map per image
            at the input's resolution, each scaled so its maximum is 1 (all
            zeros when nothing in the layer supports the class).
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"images must have shape [B, {self.input_shape}], got {images.shape}")
        indices = [int(i) for i in np.broadcast_to(np.asarray(class_indices), (len(images),))]
        scores = [InactiveScore() for _ in range(self._num_outputs)]
        scores[self._main] = CategoricalScore(indices)
        if self._compiled is not None:
            cams = self._compiled(tf.constant(images), tf.constant(indices, tf.int32)).numpy()
            return np.clip(np.nan_to_num(cams), 0.0, 1.0)
        kwargs = {"penultimate_layer": self.layer, "seek_penultimate_conv_layer": False}
        if self.method == "scorecam":
            kwargs.update(max_N=self.max_maps, batch_size=self._batch_size)
        with _quiet():
            cams = self._visualizer(scores, images, **kwargs)
        cams = np.nan_to_num(np.asarray(cams, dtype=np.float32).reshape(images.shape[:3]))
        return np.clip(cams, 0.0, 1.0)


def explain(model, images, class_indices, method=DEFAULT_METHOD, layer=None, max_maps=64):
    """Returns class activation maps ``[B, H, W]`` float32 in ``[0, 1]`` at the input size.

    A one-shot wrapper around :class:`Explainer`; see it for the arguments.
    """
    return Explainer(model, method=method, layer=layer, max_maps=max_maps)(images, class_indices)


def choose_layer(model):
    """Returns the default target layer's name (see :func:`explain.layers.choose_layer`)."""
    return layers.choose_layer(model)
