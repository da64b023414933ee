"""Training-time augmentation: a stateless, batched function of ``(images, seed)``.

The same :class:`Augmenter` runs inside ``tf.data`` (``--augment-on host``) and
inside the compiled training step (``--augment-on device``). Every random draw
is a ``tf.random.stateless_*`` call with the Philox algorithm named explicitly,
so the same seed gives the same images wherever the code runs.

Images in and out are float32 ``[B, H, W, 3]`` with values in ``[0, 255]``.
Nothing here normalizes: each model scales its own input (Inception v1's
per-image centering, the book's ``samplewise_center``, is a layer of that
model, not an augmentation).

Policies:
    ``book``: the book's Inception v1 augmentation (section 7.1.1): rotation,
        shift, shear and zoom composed with the horizontal flip into ONE
        projective transform per image (one bilinear resampling with reflect
        fill), then brightness, gamma and one random 10x10 occlusion per image.
    ``crop``: Minception's (section 7.2.5) random crop and random contrast;
        centre crop at evaluation.
    ``none``: identity.

Options after any policy's transform, in this order, each drawing from a seed
of its own (:mod:`trainer.randaugment`, timm's recipe):
    ``flip``: half of the images mirrored left-right (not twice after ``book``).
    ``randaugment=(N, M)``: RandAugment, N ops per image at magnitude M
        (timm's ``--aa rand-mM-nN``).
    ``random_erasing=P``: one noise rectangle per image with probability P
        (timm's ``--reprob P``).
"""

import dataclasses
import math

import tensorflow as tf

from contracts import policy as policy_lib
from trainer import randaugment as randaugment_lib

POLICIES = policy_lib.POLICIES
# The seed helpers live once, in randaugment (which cannot import this module).
split_seed = randaugment_lib.split_seed
_uniform = randaugment_lib.uniform
_randint = randaugment_lib.randint

_OCCLUSION_VALUES = (0.0, 128.0, 255.0)
# Folded into the seed of the options (flip, RandAugment, erasing), away from the policy's draws.
_OPTIONS_SEED_TAG = 0x6F7074


@dataclasses.dataclass(frozen=True)
class BookParams:
    """Parameter ranges of the ``book`` policy (ImageDataGenerator's meaning).

    Setting a field to its neutral value (0, ``(1.0, 1.0)`` or ``False``)
    disables that transform, so tests can check one transform at a time.

    Attributes:
        rotation_deg: Rotation drawn uniformly in ``[-rotation_deg, rotation_deg]`` degrees.
        width_shift: Horizontal shift, a fraction of the width, in ``[-width_shift, width_shift]``.
        height_shift: Vertical shift, a fraction of the height.
        shear_deg: Shear angle drawn in ``[-shear_deg, shear_deg]`` degrees.
        zoom: Zoom factors (x and y independently) drawn in ``[1 - zoom, 1 + zoom]``;
            as in Keras, a factor below 1 enlarges the content.
        horizontal_flip: Flip half of the images left-right.
        brightness_range: Multiplicative brightness factor range.
        gamma_range: Gamma exponent range applied to ``image / 255``.
        occlusion_size: Side of the square occlusion patch in pixels (0: none).
    """

    rotation_deg: float = 30.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    shear_deg: float = 5.0
    zoom: float = 0.2
    horizontal_flip: bool = True
    brightness_range: tuple[float, float] = (0.5, 1.5)
    gamma_range: tuple[float, float] = (0.9, 1.08)
    occlusion_size: int = 10

    def __post_init__(self):
        for name in ("rotation_deg", "width_shift", "height_shift", "shear_deg", "zoom"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.zoom >= 1:
            raise ValueError(f"zoom must be < 1, got {self.zoom}")
        for name in ("brightness_range", "gamma_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {getattr(self, name)}")
        if self.occlusion_size < 0:
            raise ValueError(f"occlusion_size must be >= 0, got {self.occlusion_size}")

    @classmethod
    def identity(cls):
        """Returns parameters with every transform disabled (for one-at-a-time tests)."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, False, (1.0, 1.0), (1.0, 1.0), 0)

    @property
    def geometric(self):
        """Whether any transform needs the projective resampling."""
        return bool(
            self.rotation_deg
            or self.width_shift
            or self.height_shift
            or self.shear_deg
            or self.zoom
            or self.horizontal_flip
        )


def sample_book_parameters(batch, seed, params, height=64, width=64):
    """Draws the per-image parameters of the ``book`` policy.

    Args:
        batch: Number of images (int or scalar tensor).
        seed: int ``[2]`` seed.
        params: A :class:`BookParams`.
        height: Image height (bounds the occlusion position).
        width: Image width.

    Returns:
        A dict of ``[batch]`` tensors: ``angle``, ``shear`` (radians), ``zoom_x``,
        ``zoom_y``, ``shift_x``, ``shift_y`` (pixels), ``flip`` (bool),
        ``brightness``, ``gamma``, ``occlusion_x``, ``occlusion_y`` (top-left,
        int32) and ``occlusion_value`` (0, 128 or 255).
    """
    seeds = split_seed(seed, 12)
    rotation = math.radians(params.rotation_deg)
    shear = math.radians(params.shear_deg)
    size = params.occlusion_size
    values = tf.constant(_OCCLUSION_VALUES)
    return {
        "angle": _uniform(batch, seeds[0], -rotation, rotation),
        "shear": _uniform(batch, seeds[1], -shear, shear),
        "zoom_x": _uniform(batch, seeds[2], 1.0 - params.zoom, 1.0 + params.zoom),
        "zoom_y": _uniform(batch, seeds[3], 1.0 - params.zoom, 1.0 + params.zoom),
        "shift_x": _uniform(batch, seeds[4], -params.width_shift, params.width_shift) * float(width),
        "shift_y": _uniform(batch, seeds[5], -params.height_shift, params.height_shift) * float(height),
        "flip": tf.logical_and(params.horizontal_flip, _uniform(batch, seeds[6], 0.0, 1.0) < 0.5),
        "brightness": _uniform(batch, seeds[7], *params.brightness_range),
        "gamma": _uniform(batch, seeds[8], *params.gamma_range),
        "occlusion_x": _randint(batch, seeds[9], max(width - size + 1, 1)),
        "occlusion_y": _randint(batch, seeds[10], max(height - size + 1, 1)),
        "occlusion_value": tf.gather(values, _randint(batch, seeds[11], len(_OCCLUSION_VALUES))),
    }


def projective_transforms(parameters, height, width):
    """Composes flip, zoom, shear, rotation and shift into one transform per image.

    The result maps output pixel ``(x, y)`` to the input point
    ``c + R @ Sh @ Z @ F @ ((x, y) - c) + t``, with ``c`` the image centre, in
    the 8-number form of ``ImageProjectiveTransformV3``.

    Returns:
        float32 ``[B, 8]``.
    """
    angle, shear = parameters["angle"], parameters["shear"]
    flip = tf.where(parameters["flip"], -1.0, 1.0)
    zx, zy = parameters["zoom_x"] * flip, parameters["zoom_y"]
    cos, sin = tf.cos(angle), tf.sin(angle)
    # R @ Sh with Sh = [[1, -sin(shear)], [0, cos(shear)]] (Keras's shear), then @ Z @ F.
    a00 = cos * zx
    a01 = (-cos * tf.sin(shear) - sin * tf.cos(shear)) * zy
    a10 = sin * zx
    a11 = (-sin * tf.sin(shear) + cos * tf.cos(shear)) * zy
    cx, cy = (float(width) - 1.0) / 2.0, (float(height) - 1.0) / 2.0
    a02 = cx - a00 * cx - a01 * cy + parameters["shift_x"]
    a12 = cy - a10 * cx - a11 * cy + parameters["shift_y"]
    zeros = tf.zeros_like(a00)
    return tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)


def _occlude(images, parameters, size):
    """Overwrites one ``size`` x ``size`` square per image with its occlusion value.

    A scatter touches only the B * size * size patch pixels; a full-image
    mask and select costs about ten times more on CPU.
    """
    batch = tf.shape(images)[0]
    offsets = tf.range(size)
    rows = parameters["occlusion_y"][:, None, None] + offsets[None, :, None]
    cols = parameters["occlusion_x"][:, None, None] + offsets[None, None, :]
    grid = [batch, size, size]
    indices = tf.stack(
        [
            tf.broadcast_to(tf.range(batch)[:, None, None], grid),
            tf.broadcast_to(rows, grid),
            tf.broadcast_to(cols, grid),
        ],
        axis=-1,
    )
    values = tf.broadcast_to(parameters["occlusion_value"][:, None, None, None], [batch, size, size, 3])
    return tf.tensor_scatter_nd_update(images, indices, values)


def _brightness_gamma(images, parameters, params):
    """``clip(255 * (clip(b * x) / 255) ** g)`` in as few passes over the pixels as possible.

    Gamma is increasing and maps 255 to 255, so clipping once after it equals
    clipping the brightened image first. The power is computed as
    ``exp(g * log(x) + g * log(b) + (1 - g) * log(255))``: TF's CPU Pow is scalar
    code, about ten times slower than the vectorized exp and log. x = 0 gives 0.
    """
    if params.gamma_range == (1.0, 1.0):
        if params.brightness_range != (1.0, 1.0):
            images = images * parameters["brightness"][:, None, None, None]
        return tf.clip_by_value(images, 0.0, 255.0)
    gamma = parameters["gamma"]
    offset = (1.0 - gamma) * math.log(255.0)
    if params.brightness_range != (1.0, 1.0):
        offset += gamma * tf.math.log(parameters["brightness"])
    images = tf.exp(gamma[:, None, None, None] * tf.math.log(images) + offset[:, None, None, None])
    return tf.clip_by_value(images, 0.0, 255.0)


def book_augment(images, seed, params=None):
    """Applies the ``book`` policy to a batch.

    Args:
        images: float32 ``[B, H, W, 3]`` in ``[0, 255]``.
        seed: int ``[2]`` seed.
        params: A :class:`BookParams` (default: the book's ranges).

    Returns:
        float32 ``[B, H, W, 3]`` in ``[0, 255]``.
    """
    params = params or BookParams()
    shape = tf.shape(images)
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(f"book_augment needs a static image height and width, got shape {images.shape}")
    parameters = sample_book_parameters(shape[0], seed, params, height, width)
    if params.geometric:
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=projective_transforms(parameters, height, width),
            output_shape=shape[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )
    images = _brightness_gamma(images, parameters, params)
    if params.occlusion_size:
        images = _occlude(images, parameters, params.occlusion_size)
    return images


def random_crop(images, seed, crop_size):
    """Crops a different random ``crop_size`` square out of every image (exact, no resampling)."""
    shape = tf.shape(images)
    seeds = split_seed(seed, 2)
    rows = _randint(shape[0], seeds[0], shape[1] - crop_size + 1)[:, None] + tf.range(crop_size)[None]
    cols = _randint(shape[0], seeds[1], shape[2] - crop_size + 1)[:, None] + tf.range(crop_size)[None]
    images = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def random_contrast(images, seed, contrast):
    """Scales every image around its per-channel mean by a factor in ``[1 - contrast, 1 + contrast]``."""
    factor = _uniform(tf.shape(images)[0], seed, 1.0 - contrast, 1.0 + contrast)[:, None, None, None]
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((images - mean) * factor + mean, 0.0, 255.0)


class Augmenter:
    """A policy bound to its sizes; ``augmenter(images, seed)`` augments one batch.

    Plain Python object holding no TF state, so it can be called inside
    ``Dataset.map`` and inside a ``tf.function`` training step alike.

    Args:
        policy: One of :data:`POLICIES`.
        image_size: Side of the source images.
        crop_size: Crop side of the ``crop`` policy; ``None``: 7/8 of ``image_size``
            (:func:`contracts.policy.default_crop_size`).
        book_params: :class:`BookParams` of the ``book`` policy.
        contrast: Contrast range of the ``crop`` policy (0 disables it).
        randaugment: ``(num_ops, magnitude)`` of :func:`trainer.randaugment.rand_augment`
            (timm's ``rand-m{magnitude}-n{num_ops}``), or None for none.
        random_erasing: Probability of :func:`trainer.randaugment.random_erasing` (0: off).
        flip: Flip half of the images left-right (ignored by a ``book`` policy that flips already).
    """

    def __init__(
        self,
        policy,
        image_size=64,
        crop_size=None,
        *,
        book_params=None,
        contrast=0.3,
        randaugment=None,
        random_erasing=0.0,
        flip=False,
    ):
        crop_size = policy_lib.resolve_crop_size(image_size, crop_size)
        policy_lib.check_policy(policy, image_size, crop_size)
        if not 0 <= contrast < 1:
            raise ValueError(f"contrast must be in [0, 1), got {contrast}")
        if randaugment is not None:
            if not isinstance(randaugment, tuple | list) or len(randaugment) != 2:
                raise ValueError(f"randaugment must be (num_ops, magnitude) or None, got {randaugment!r}")
            randaugment_lib.check_rand_augment(*randaugment)
            randaugment = tuple(randaugment)
        if not 0 <= random_erasing <= 1:
            raise ValueError(f"random_erasing must be in [0, 1], got {random_erasing!r}")
        self.policy = policy
        self.image_size = image_size
        self.crop_size = crop_size
        self.book_params = book_params or BookParams()
        self.contrast = contrast
        self.randaugment = randaugment
        self.random_erasing = random_erasing
        self.flip = bool(flip)

    @property
    def output_size(self):
        """Side of the augmented images."""
        return policy_lib.output_size(self.policy, self.image_size, self.crop_size)

    @property
    def xla_compatible(self):
        """Whether the augmenter can run inside ``tf.function(jit_compile=True)``.

        ``ImageProjectiveTransformV3`` (``book``'s geometry, RandAugment's
        geometric ops) has no XLA kernel, and RandAugment's per-image op
        selection has data-dependent shapes: a jit-compiled training step must
        call such an augmenter outside its compiled part.
        """
        book_geometry = self.policy == "book" and self.book_params.geometric
        return not book_geometry and self.randaugment is None

    def __call__(self, images, seed):
        """Augments a batch: the policy, then flip, RandAugment and random erasing.

        Args:
            images: float32 ``[B, H, W, 3]`` in ``[0, 255]`` (other dtypes are cast).
            seed: int32/int64 ``[2]`` seed; every random draw derives from it.

        Returns:
            float32 ``[B, output_size, output_size, 3]`` in ``[0, 255]``.
        """
        images = self._policy(tf.cast(images, tf.float32), seed)
        flip = self.flip and not (self.policy == "book" and self.book_params.horizontal_flip)
        if not (flip or self.randaugment or self.random_erasing):
            return images
        # The options draw from seeds of their own, folded away from the policy's
        # (which keeps its draws of before the options existed): turning one on
        # or off changes the draws of no other.
        base = tf.random.experimental.stateless_fold_in(
            tf.cast(seed, tf.int64), _OPTIONS_SEED_TAG, alg="philox"
        )
        seeds = split_seed(base, 3)
        if flip:
            images = randaugment_lib.random_flip(images, seeds[0])
        if self.randaugment:
            images = randaugment_lib.rand_augment(images, seeds[1], *self.randaugment)
        if self.random_erasing:
            images = randaugment_lib.random_erasing(images, seeds[2], self.random_erasing)
        return images

    def _policy(self, images, seed):
        if self.policy == "book":
            return book_augment(images, seed, self.book_params)
        if self.policy == "crop":
            seeds = split_seed(seed, 2)
            images = random_crop(images, seeds[0], self.crop_size)
            return random_contrast(images, seeds[1], self.contrast) if self.contrast else images
        return images

    def eval_transform(self, images):
        """The policy's deterministic evaluation transform (see :func:`contracts.policy.eval_transform`)."""
        return policy_lib.eval_transform(
            self.policy, tf.cast(images, tf.float32), self.image_size, self.crop_size
        )

    def __repr__(self):
        return (
            f"Augmenter(policy={self.policy!r}, image_size={self.image_size}, crop_size={self.crop_size}, "
            f"randaugment={self.randaugment!r}, random_erasing={self.random_erasing!r}, flip={self.flip!r})"
        )
