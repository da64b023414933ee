"""SavedModel export with a serving signature that takes JPEG bytes.

The signature ``serving_default`` takes ``images``: a ``tf.string [None]``
batch of encoded JPEGs; it decodes them (3 channels), resizes them to the
dataset's image size, applies the augmentation policy's evaluation transform
and returns the top-5 ``classes`` (indices), ``wnids``, ``names`` and
``probabilities``.
"""

import keras
import tensorflow as tf

from contracts import policy as policy_lib
from trainer import models

SIGNATURE = "serving_default"


def serving_function(model, *, wnids, class_names, image_size, policy, crop_size, top_k=5):
    """Returns a ``tf.function`` mapping JPEG bytes to the top-k predictions.

    Args:
        model: The single-output model (raw pixels in [0, 255] -> softmax).
        wnids: WordNet ids in label order.
        class_names: Class names in label order.
        image_size: Side of the dataset's images.
        policy: Augmentation policy whose evaluation transform is applied.
        crop_size: Crop side of the ``crop`` policy.
        top_k: Number of classes returned per image.
    """
    k = min(top_k, len(wnids))
    wnid_table = tf.constant(list(wnids))
    name_table = tf.constant(list(class_names))

    def decode(data):
        image = tf.io.decode_jpeg(data, channels=3)
        image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size])
        return tf.clip_by_value(image, 0.0, 255.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve(images):
        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([image_size, image_size, 3]))
        pixels = policy_lib.eval_transform(policy, pixels, image_size, crop_size)
        probabilities = tf.cast(model(pixels, training=False), tf.float32)
        top, classes = tf.math.top_k(probabilities, k=k)
        return {
            "classes": classes,
            "wnids": tf.gather(wnid_table, classes),
            "names": tf.gather(name_table, classes),
            "probabilities": top,
        }

    return serve


def export_saved_model(model, directory, **kwargs):
    """Writes ``model`` as a SavedModel with the JPEG-bytes signature.

    Args:
        model: A single-output model built outside any distribution strategy.
        directory: Local target folder.
        **kwargs: Passed to :func:`serving_function`.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serving_function(model, **kwargs))
    archive.write_out(directory, verbose=False)
    return directory


def export_model(main_model, directory, *, arch, build_options, info, policy, crop_size):
    """Exports the trained main model as a SavedModel, rebuilt in float32 outside any strategy.

    A plain copy avoids tracing distributed variables into the SavedModel and
    serves in float32 whatever the training precision was.

    Args:
        main_model: The trained single-output model.
        directory: Local export folder.
        arch: Registered architecture name.
        build_options: The options the model was built with (``weights`` is ignored).
        info: The dataset's :class:`contracts.dataset.DatasetInfo`.
        policy: Augmentation policy whose evaluation transform serving applies.
        crop_size: Crop side of the ``crop`` policy.
    """
    keras.mixed_precision.set_dtype_policy("float32")
    options = {**build_options, "weights": None}
    plain = models.main_output_model(models.build_model(arch, info.num_classes, **options))
    plain.set_weights(main_model.get_weights())
    return export_saved_model(
        plain,
        directory,
        wnids=info.wnids,
        class_names=info.class_names,
        image_size=info.image_size,
        policy=policy,
        crop_size=crop_size,
    )
