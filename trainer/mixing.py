"""Mixup, CutMix and label smoothing: a training batch's images and soft targets.

Mixing needs the labels of both images of a pair, so it runs in the training
step (on the device, whatever ``--augment-on`` says), after the per-image
augmentation. Each batch is paired with itself reversed (timm's ``Mixup``
pairs ``x`` with ``x.flip(0)``) and draws one ``lam ~ Beta(alpha, alpha)``;
CutMix pastes one box of area ``1 - lam`` and corrects ``lam`` to the area
actually pasted after clipping (timm's ``correct_lam``). With both on, each
batch uses one of the two with even odds (timm's ``switch_prob=0.5``). Every
draw is a stateless function of the seed handed in, so a resumed run mixes
exactly as the interrupted one would have. Keras' ``MixUp``/``CutMix`` layers
draw from a stateful seed generator, which breaks that, hence this module.
"""

import keras
import tensorflow as tf

# Chance of CutMix (rather than mixup) for a batch when both are on (timm's switch_prob).
SWITCH_PROB = 0.5


def soft_targets(labels, num_classes, smoothing=0.0):
    """One-hot targets with ``smoothing`` spread evenly over every class (Szegedy et al. 2016)."""
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def head_loss(labels, targets, probabilities):
    """Per-example cross-entropy of one head: against ``targets`` when given, else the integer labels."""
    probabilities = tf.cast(probabilities, tf.float32)
    if targets is None:
        return keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    return keras.losses.categorical_crossentropy(targets, probabilities)


def sample_beta(seed, alpha):
    """One ``Beta(alpha, alpha)`` draw from two stateless gamma draws."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    first = tf.random.stateless_gamma([], seeds[0], alpha)
    second = tf.random.stateless_gamma([], seeds[1], alpha)
    return first / tf.maximum(first + second, 1e-12)


def cutmix_box(seed, height, width, lam):
    """The box CutMix pastes for ``lam``: ``[H, W]`` bool mask and the ``lam`` it leaves.

    The box has sides ``sqrt(1 - lam)`` of the image's, a centre uniform over
    the image, and is clipped to it; the returned ``lam`` is the fraction of
    pixels kept from the first image.
    """
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    centre_y = tf.random.stateless_uniform([], seeds[0], 0, height, dtype=tf.int32)
    centre_x = tf.random.stateless_uniform([], seeds[1], 0, width, dtype=tf.int32)
    top, bottom = tf.maximum(centre_y - cut_h // 2, 0), tf.minimum(centre_y + cut_h // 2, height)
    left, right = tf.maximum(centre_x - cut_w // 2, 0), tf.minimum(centre_x + cut_w // 2, width)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    mask = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    pasted = tf.cast((bottom - top) * (right - left), tf.float32)
    return mask, 1.0 - pasted / tf.cast(height * width, tf.float32)


class Mixer:
    """Mixes a batch and returns its soft targets; ``mixer(images, labels, seed)``.

    Args:
        num_classes: Number of classes.
        mixup: Mixup's alpha; 0: off.
        cutmix: CutMix's alpha; 0: off.
        label_smoothing: Smoothing of the targets (mixed after smoothing, as timm).
    """

    def __init__(self, num_classes, *, mixup=0.0, cutmix=0.0, label_smoothing=0.0):
        for name, value in (("mixup", mixup), ("cutmix", cutmix)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0: off), got {value}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.num_classes = num_classes
        self.mixup = float(mixup)
        self.cutmix = float(cutmix)
        self.label_smoothing = float(label_smoothing)

    @property
    def active(self):
        """Whether the mixer changes anything (else the loss takes the integer labels)."""
        return bool(self.mixup or self.cutmix or self.label_smoothing)

    def __call__(self, images, labels, seed):
        """Returns ``(mixed images, soft targets [B, num_classes])``.

        Args:
            images: ``[B, H, W, C]`` float images (static height and width).
            labels: int ``[B]``.
            seed: int ``[2]`` stateless seed.
        """
        targets = soft_targets(labels, self.num_classes, self.label_smoothing)
        if not (self.mixup or self.cutmix):
            return images, targets
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
        partner_images, partner_targets = tf.reverse(images, [0]), tf.reverse(targets, [0])
        if self.mixup and self.cutmix:
            choose_cutmix = tf.random.stateless_uniform([], seeds[0]) < SWITCH_PROB
            mixed, lam = tf.cond(
                choose_cutmix,
                lambda: self._cutmix(images, partner_images, seeds[2], seeds[3]),
                lambda: self._mixup(images, partner_images, seeds[1]),
            )
        elif self.cutmix:
            mixed, lam = self._cutmix(images, partner_images, seeds[2], seeds[3])
        else:
            mixed, lam = self._mixup(images, partner_images, seeds[1])
        return mixed, lam * targets + (1.0 - lam) * partner_targets

    def _mixup(self, images, partner, seed):
        lam = sample_beta(seed, self.mixup)
        mixed = lam * tf.cast(images, tf.float32) + (1.0 - lam) * tf.cast(partner, tf.float32)
        return tf.cast(mixed, images.dtype), lam

    def _cutmix(self, images, partner, beta_seed, box_seed):
        lam = sample_beta(beta_seed, self.cutmix)
        mask, lam = cutmix_box(box_seed, images.shape[1], images.shape[2], lam)
        return tf.where(mask[None, :, :, None], partner, images), lam

    def __repr__(self):
        return f"Mixer(mixup={self.mixup}, cutmix={self.cutmix}, label_smoothing={self.label_smoothing})"
