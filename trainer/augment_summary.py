"""TensorBoard images of training samples next to their augmented versions (the book's figure 7.3)."""

import keras
import tensorflow as tf

from contracts import dataset

_GAP = 2  # White pixels between the original and the augmented image.


def side_by_side(images, augmented):
    """Places every original image left of its augmented version.

    The augmented image is centred on a canvas of the original's size when a
    policy made it smaller (``crop``), so both halves share one scale.

    Args:
        images: float32 ``[B, H, W, 3]`` in ``[0, 255]``.
        augmented: float32 ``[B, h, w, 3]`` in ``[0, 255]``, ``h <= H``, ``w <= W``.

    Returns:
        float32 ``[B, H, 2 * W + gap, 3]`` in ``[0, 1]``.
    """
    height, width = images.shape[1], images.shape[2]
    pad_y, pad_x = height - augmented.shape[1], width - augmented.shape[2]
    augmented = tf.pad(
        augmented, [[0, 0], [pad_y // 2, pad_y - pad_y // 2], [pad_x // 2, pad_x - pad_x // 2], [0, 0]]
    )
    gap = tf.fill([tf.shape(images)[0], height, _GAP, 3], 255.0)
    return tf.concat([images, gap, augmented], axis=2) / 255.0


def write_augmentation_summary(logdir, images, augmenter, seed, step=0, max_images=8, name="augmentation"):
    """Writes original | augmented pairs of a few training images as a TensorBoard image summary.

    Args:
        logdir: TensorBoard log folder (local or ``gs://``).
        images: float32 ``[B, H, W, 3]`` un-augmented training images in ``[0, 255]``.
        augmenter: A :class:`trainer.augment.Augmenter`.
        seed: int ``[2]`` augmentation seed.
        step: Summary step.
        max_images: Number of pairs written.
        name: Summary tag.

    Returns:
        The float32 ``[N, H, 2 * W + gap, 3]`` pairs in ``[0, 1]`` that were written.
    """
    images = tf.cast(images[:max_images], tf.float32)
    pairs = side_by_side(images, augmenter(images, seed))
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        tf.summary.image(name, pairs, step=step, max_outputs=max_images)
    writer.flush()
    writer.close()
    return pairs


class AugmentationSummary(keras.callbacks.Callback):
    """Writes original | augmented pairs of the first training images once, when training begins.

    Args:
        info: The dataset's :class:`contracts.dataset.DatasetInfo`.
        augmenter: The run's :class:`trainer.augment.Augmenter`.
        logdir: Local TensorBoard folder (the run's ``logs/train``).
        seed: The run's seed; the pairs use augmentation seed ``[seed, 0]``.
        max_images: Number of pairs.
    """

    def __init__(self, info, augmenter, logdir, seed, max_images=8):
        super().__init__()
        self.info = info
        self.augmenter = augmenter
        self.logdir = logdir
        self.seed = seed
        self.max_images = max_images
        self.written = False

    def on_train_begin(self, logs=None):
        # A second training phase (fine-tuning) begins again: write once.
        if self.written:
            return
        raw = dataset.make_dataset(self.info, "train", global_batch_size=self.max_images, policy="none")
        images, _ = next(iter(raw))
        write_augmentation_summary(
            self.logdir,
            images,
            self.augmenter,
            seed=[self.seed, 0],
            step=0,
            max_images=self.max_images,
            name="augmented",
        )
        self.written = True
