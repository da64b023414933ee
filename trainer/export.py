"""SavedModel export with signatures that take encoded image bytes, and its reader.

Every signature takes ``images``: a ``tf.string [None]`` batch of encoded
JPEG, PNG, GIF (its first frame), BMP or WebP files. Each image is decoded by
:func:`contracts.decode.decode_image` (the pixels PIL gives the preprocessing
job and ``trainer.predict``: alpha composited on white, 16-bit samples cut to
8, the pixel cap checked from the header before decoding), made the dataset's
square size by the dataset's resize policy (:func:`contracts.resize.resize`,
the function the preprocessing job resized its records with) and given the augmentation
policy's evaluation transform, exactly as in evaluation. Both policies and the
sizes are baked into the graph and written beside it in
``assets.extra/preprocessing.json`` (:data:`SETTINGS_FILE`).

* ``serving_default``: the top-5 ``classes`` (int32 indices), ``wnids``,
  ``names`` and ``probabilities`` (float32), best first; calibrated by the job's
  softmax temperature (:mod:`trainer.calibration`) when the run fitted one.
* ``explain``: the same four plus the Grad-CAM of the top class on
  :func:`gradcam_layer` (the registry's ``feature_layer``): ``heatmap`` float32 ``[B, S, S]`` at the model
  input side ``S``, in ``[0, 1]`` with maximum 1 (all zeros when nothing in the
  layer supports the class), and ``peak`` int32 ``[B, 2]``, the ``(y, x)`` of
  the heatmap's maximum. Computed by :class:`explain.tfcam.GradCam`, which
  reproduces tf-keras-vis' Grad-CAM in graph ops.
* ``preprocess``: ``pixels`` float32 ``[B, S, S, 3]``, the model's input (what
  the heatmap covers; ``trainer.predict`` draws its panels on it).

An empty batch gets empty outputs of these shapes. An image that cannot be
decoded fails its batch with ``InvalidArgumentError``; :class:`LoadedExport`
turns it into one line (:func:`contracts.decode.error_message`). The folder is
written whole or not at all (:func:`trainer.export_io.publish`).
"""

import functools
import json
import os
import sys

# First, before anything imports TensorFlow: it reads its log settings once, when it loads.
from contracts import quiet

if __name__ == "__main__":
    quiet.quiet_tensorflow()

import keras
import numpy as np
import tensorflow as tf

from contracts import decode, resize, storage
from contracts import policy as policy_lib
from explain import layers, tfcam
from trainer import calibration, export_io, models

SIGNATURE = "serving_default"
EXPLAIN_SIGNATURE = "explain"
PREPROCESS_SIGNATURE = "preprocess"
SAVED_MODEL_FILE = "saved_model.pb"
# What the export does to an image before the model, for readers without TensorFlow.
# assets.extra/ is the SavedModel's folder for files that loading ignores.
SETTINGS_FILE = "assets.extra/preprocessing.json"
_INPUT = [tf.TensorSpec([None], tf.string, name="images")]


def gradcam_layer(arch, model):
    """Returns the layer the export's Grad-CAM explains, and a warning when it is not the usual one.

    It is the architecture's ``feature_layer``, unless the input side leaves that
    layer's map 1x1 (Inception-ResNet-v2 below a ``--backbone-size`` of
    :data:`trainer.models.inception_resnet_v2.SPATIAL_BACKBONE_SIZE`):
    Grad-CAM of a 1x1 map is one flat value, so the export then explains the
    last layer whose map is still spatial. The trainer checks this right after
    building the model, so the warning comes before training, not at the export.

    Returns:
        ``(layer_name, warning)``; ``warning`` is ``None`` for the usual layer.
    """
    usual = models.get_defaults(arch).feature_layer
    if usual in layers.spatial_layers(model):
        return usual, None
    layer = layers.choose_layer(model)
    height, width = model.get_layer(layer).output.shape[1:3]
    # Only Inception-ResNet-v2 gets here: Minception and Inception v1 keep a map of 2x2 or more
    # at the smallest input side the registry accepts.
    enough = models.inception_resnet_v2.SPATIAL_BACKBONE_SIZE
    return layer, (
        # Not the layer's name: Keras numbers unnamed layers per session, so the export's own build
        # of the model names the same layer differently.
        f"at this input side the feature map of {usual!r} is 1x1: the export's Grad-CAM explains the "
        f"last layer still spatial ({height}x{width}) instead; a --backbone-size of {enough} or more "
        f"keeps {usual!r}"
    )


def preprocess_function(*, image_size, policy, crop_size, resize_policy=resize.DEFAULT_POLICY):
    """Returns a traceable ``fn(images) -> pixels`` from encoded bytes to the model's input.

    Args:
        image_size: Side of the dataset's images; every image is resized to it.
        policy: Augmentation policy whose evaluation transform is applied.
        crop_size: Crop side of the ``crop`` policy.
        resize_policy: The dataset's resize policy (:data:`contracts.resize.POLICIES`).
    """
    resize.check_policy(resize_policy)
    prepare = _prepare_function(image_size, resize_policy)

    def preprocess(images):
        pixels = tf.map_fn(prepare, images, fn_output_signature=tf.TensorSpec([image_size, image_size, 3]))
        return policy_lib.eval_transform(policy, pixels, image_size, crop_size)

    return preprocess


@functools.cache
def _prepare_function(image_size, resize_policy):
    """The one ``tf.function`` from one image's bytes to its float32 pixels, per size and policy.

    Shared: the export's three signatures call the same function, so the hardened decode (six
    formats, their header checks) is traced once per export instead of once per signature, a
    third of its time in a quick run's export.
    """

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def prepare(data):
        # The one decode of every path: the pixels PIL gives the Beam job and trainer.predict.
        image = decode.decode_image(data)
        return tf.cast(resize.resize(image, image_size, resize_policy), tf.float32)

    return prepare


def _never_empty(pixels):
    """``pixels``, or one black image for an empty batch (its rows are dropped again by :func:`_rows`):
    the model never sees a batch of none, which has failed inside batch normalisation."""
    one = tf.zeros(tf.concat([[1], tf.shape(pixels)[1:]], axis=0), pixels.dtype)
    return tf.cond(tf.shape(pixels)[0] > 0, lambda: pixels, lambda: one)


def _rows(outputs, count):
    """The first ``count`` rows of every output (all of them, or none for an empty batch)."""
    return {key: value[:count] for key, value in outputs.items()}


def _top_k_outputs(probabilities, wnids, class_names, top_k, temperature=None):
    if temperature is not None:
        # The same top classes; calibrated probabilities (trainer.calibration).
        probabilities = calibration.apply_temperature_tf(probabilities, temperature)
    top, classes = tf.math.top_k(probabilities, k=min(top_k, len(wnids)))
    return {
        "classes": classes,
        "wnids": tf.gather(tf.constant(list(wnids)), classes),
        "names": tf.gather(tf.constant(list(class_names)), classes),
        "probabilities": top,
    }


def serving_function(
    model,
    *,
    wnids,
    class_names,
    image_size,
    policy,
    crop_size,
    resize_policy=resize.DEFAULT_POLICY,
    top_k=5,
    temperature=None,
):
    """Returns a ``tf.function`` mapping encoded images to the top-k predictions.

    Args:
        model: The single-output model (raw pixels in [0, 255] -> softmax).
        wnids: WordNet ids in label order.
        class_names: Class names in label order.
        image_size: Side of the dataset's images.
        policy: Augmentation policy whose evaluation transform is applied.
        crop_size: Crop side of the ``crop`` policy.
        resize_policy: The dataset's resize policy, which makes every image ``image_size`` square.
        top_k: Number of classes returned per image.
        temperature: The job's softmax temperature (metrics.json's ``calibration``): the
            probabilities served are calibrated; ``None``: the model's softmax.
    """
    preprocess = preprocess_function(
        image_size=image_size, policy=policy, crop_size=crop_size, resize_policy=resize_policy
    )

    @tf.function(input_signature=_INPUT, autograph=False)
    def serve(images):
        probabilities = tf.cast(model(_never_empty(preprocess(images)), training=False), tf.float32)
        outputs = _top_k_outputs(probabilities, wnids, class_names, top_k, temperature)
        return _rows(outputs, tf.shape(images)[0])

    return serve


def explain_function(
    model,
    *,
    layer,
    wnids,
    class_names,
    image_size,
    policy,
    crop_size,
    resize_policy=resize.DEFAULT_POLICY,
    top_k=5,
    temperature=None,
):
    """Returns a ``tf.function`` mapping encoded images to the top-k and the top class's Grad-CAM.

    Args:
        model: The single-output float32 model.
        layer: Name of Grad-CAM's target layer; ``None`` picks the last spatial one.
        wnids, class_names, image_size, policy, crop_size, resize_policy, top_k, temperature: As
            :func:`serving_function`.
    """
    preprocess = preprocess_function(
        image_size=image_size, policy=policy, crop_size=crop_size, resize_policy=resize_policy
    )
    gradcam = tfcam.GradCam(model, layer)

    @tf.function(input_signature=_INPUT, autograph=False)
    def explain(images):
        # One forward pass gives both: top_k and GradCam break ties alike, so
        # the heatmap is always that of classes[:, 0].
        cam = gradcam(_never_empty(preprocess(images)))
        outputs = _top_k_outputs(cam["probabilities"], wnids, class_names, top_k, temperature)
        return _rows({**outputs, "heatmap": cam["heatmap"], "peak": cam["peak"]}, tf.shape(images)[0])

    return explain


def export_saved_model(model, directory, *, layer=None, **kwargs):
    """Writes ``model`` as a SavedModel with the three image-bytes signatures, whole or not at all.

    Args:
        model: A single-output float32 model built outside any distribution strategy.
        directory: Local target folder.
        layer: Grad-CAM's target layer of ``explain`` (``None``: the last spatial one).
        **kwargs: ``wnids``, ``class_names``, ``image_size``, ``policy``,
            ``crop_size`` (and ``resize_policy``, ``top_k``, ``temperature``), as :func:`serving_function`
            takes them.

    Raises:
        trainer.export_io.ExportError: When the folder cannot be written (a full disk included);
            nothing is left behind and a previous export there is kept.
    """
    settings = {
        "image_size": kwargs["image_size"],
        "policy": kwargs["policy"],
        "crop_size": kwargs["crop_size"],
        "resize_policy": kwargs.get("resize_policy", resize.DEFAULT_POLICY),
    }
    preprocess = preprocess_function(**settings)
    pixels = tf.function(
        lambda images: {"pixels": preprocess(images)}, input_signature=_INPUT, autograph=False
    )
    signatures = {
        SIGNATURE: serving_function(model, **kwargs),
        EXPLAIN_SIGNATURE: explain_function(model, layer=layer, **kwargs),
        PREPROCESS_SIGNATURE: pixels,
    }
    # The object keras.export.ExportArchive writes (the model's variable lists and one function
    # per signature), saved directly: the archive traced every signature once more outside the
    # save and walked every layer in search of lookup tables, half of the export's time.
    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = list(model.variables)
    root.trainable_variables = list(model.trainable_variables)
    root.non_trainable_variables = list(model.non_trainable_variables)
    for name, function in signatures.items():
        setattr(root, name, function)
    with export_io.publish(directory) as partial:
        tf.saved_model.save(root, partial, signatures=signatures)
        _write_settings(partial, settings)
    return directory


def _write_settings(directory, settings):
    """Writes :data:`SETTINGS_FILE`: the resize as metadata.json records it, then the evaluation transform."""
    path = os.path.join(directory, SETTINGS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    document = {
        "resize": {"policy": settings["resize_policy"], "size": settings["image_size"]},
        "evaluation": {"policy": settings["policy"], "crop_size": settings["crop_size"]},
    }
    with open(path, "w") as f:
        json.dump(document, f, indent=1)


def export_model(main_model, directory, *, arch, build_options, info, policy, crop_size, temperature=None):
    """Exports the trained main model as a SavedModel, rebuilt in float32 outside any strategy.

    A plain copy avoids tracing distributed variables into the SavedModel and
    serves (and explains) in float32 whatever the training precision was.

    Args:
        main_model: The trained single-output model.
        directory: Local export folder.
        arch: Registered architecture name (Grad-CAM's target is :func:`gradcam_layer`).
        build_options: The options the model was built with (``weights`` is ignored).
        info: The dataset's :class:`contracts.dataset.DatasetInfo`.
        policy: Augmentation policy whose evaluation transform serving applies.
        crop_size: Crop side of the ``crop`` policy.
        temperature: The fitted softmax temperature the signatures apply; ``None``: none.

    The dataset's resize policy (``info.resize_policy``) resizes every served image.
    """
    keras.mixed_precision.set_dtype_policy("float32")
    options = {**build_options, "weights": None}
    plain = models.main_output_model(models.build_model(arch, info.num_classes, **options))
    plain.set_weights(main_model.get_weights())
    return export_saved_model(
        plain,
        directory,
        layer=gradcam_layer(arch, plain)[0],
        wnids=info.wnids,
        class_names=info.class_names,
        image_size=info.image_size,
        policy=policy,
        crop_size=crop_size,
        resize_policy=info.resize_policy,
        temperature=temperature,
    )


def is_export(path):
    """Returns whether ``path`` (local or ``gs://``) is a SavedModel folder."""
    return storage.exists(storage.join(str(path).rstrip("/"), SAVED_MODEL_FILE))


class ImageDecodeError(ValueError):
    """An image of the batch is not one the export can decode."""


class LoadedExport:
    """The signatures of an exported SavedModel, called with lists of encoded images.

    Args:
        path: Export folder, local or ``gs://``.

    Raises:
        ValueError: When the folder cannot be loaded or has no ``serving_default``.
    """

    def __init__(self, path):
        self.path = str(path).rstrip("/")
        try:
            with storage.local_folder(self.path) as local:
                loaded = tf.saved_model.load(local)
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise ValueError(f"{self.path}: cannot load the SavedModel ({error})") from None
        if SIGNATURE not in loaded.signatures:
            raise ValueError(f"{self.path}: the SavedModel has no {SIGNATURE!r} signature")
        self._loaded = loaded  # Holds the variables the signatures use.

    def has(self, name):
        """Whether the export has signature ``name`` (exports written before ``explain`` lack two)."""
        return name in self._loaded.signatures

    def __call__(self, name, images):
        """Calls signature ``name`` on a list of encoded images; returns its outputs as numpy arrays.

        Raises:
            ValueError: When the export has no such signature.
            ImageDecodeError: When an image cannot be decoded.
        """
        if not self.has(name):
            raise ValueError(f"{self.path}: the SavedModel has no {name!r} signature; export it again")
        try:
            outputs = self._loaded.signatures[name](images=tf.constant(list(images), dtype=tf.string))
        except tf.errors.InvalidArgumentError as error:
            # TensorFlow wraps the op's own words in a graph-execution preamble and node names.
            raise ImageDecodeError(decode.error_message(error)) from None
        return {key: value.numpy() for key, value in outputs.items()}


def decode_names(values):
    """Returns a ``tf.string`` output (bytes) as a list of ``str``."""
    return [value.decode("utf-8") for value in np.asarray(values).ravel()]


def main(argv=None):
    """``python -m trainer.export --model J --format tflite|tflite-int8 --output FILE`` (trainer/tflite.py).

    Returns:
        The exit code (0 done, 2 bad input).
    """
    # Imported here: the trainer's SavedModel export needs nothing of the TFLite converter.
    from trainer import tflite

    return tflite.main(argv)


if __name__ == "__main__":
    sys.exit(main())
