"""RandAugment, random erasing and random flip: per-image, stateless and batched.

Functions take float32 ``[B, H, W, 3]`` images in ``[0, 255]`` and an int ``[2]`` seed and return
the same shape and range. Every draw is a ``tf.random.stateless_*`` call with Philox named, so a
seed gives the same images in ``tf.data`` (host) and in a ``tf.function`` step (device), and a run
is reproducible from (seed, epoch, step). :mod:`trainer.augment` imports its seed helpers from here.

Why not ``keras.layers.RandAugment`` (or ``RandomErasing``): they draw from a stateful
``SeedGenerator`` and ignore a seed passed in (no host == device, no exact resume), and
RandAugment picks the same ops for the whole batch. Here each image draws its own.

RandAugment (Cubuk et al. 2020, https://arxiv.org/abs/1909.13719) as timm's ``--aa rand-mM-nN``
(``timm/data/auto_augment.py``): each image draws ``num_ops`` ops uniformly with replacement, each
applied with probability 0.5 (timm's ``rand_augment_ops``). The ops are the paper's, identity in,
invert out, less equalize: it needs a 256-bin histogram and lookup table per image and channel (a
scatter-add over every pixel, the slowest kind of op on the CPU host). Magnitudes are timm's (0..10
scale, ``_LEVEL_DENOM``); signed ops draw a sign per image; posterize and solarize use timm's
"increasing" forms (a larger magnitude is always a stronger change).

Each layer runs each colour op only on the images that drew it (``dynamic_partition`` and
``dynamic_stitch``, instead of every op on every image and a masked select; on a GPU each
partition waits for the host). Geometric ops compose into one projective map per image, applied
once after the colour ops, to the images that drew one. Fill: timm's grey 128, not reflect:
translations reach 45% of the side, and reflect would mirror objects into view.
"""

import math

import tensorflow as tf

# Philox by name: "auto_select" may pick another algorithm on another device.
_ALG = "philox"
_LEVEL_DENOM = 10.0
FILL_VALUE = 128.0
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
COLOUR_OPS = ("auto_contrast", "posterize", "solarize", "color", "contrast", "brightness", "sharpness")
OPS = ("identity", *COLOUR_OPS, *GEOMETRIC_OPS)
MAX_MAGNITUDE = 30.0  # timm clips at 10 unless ``mmax`` raises it.
ERASING_AREA = (0.02, 1.0 / 3.0)
ERASING_ASPECT = (0.3, 3.3)


def split_seed(seed, num):
    """Derives ``num`` independent int64 ``[2]`` seeds from one ``[2]`` seed.

    Returns:
        int64 ``[num, 2]``.
    """
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.random.stateless_uniform([num, 2], seed, minval=None, maxval=None, dtype=tf.int64, alg=_ALG)


def _unit(shape, seed):
    # TF's float stateless_uniform draws different numbers under XLA than
    # without it; its integer draws agree, so floats are made from 23 bits of those.
    bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.int32, alg=_ALG)
    return tf.cast(tf.bitwise.bitwise_and(bits, (1 << 23) - 1), tf.float32) * (1.0 / (1 << 23))


def uniform(batch, seed, low, high):
    """Floats uniform in ``[low, high)``, ``[batch]``; XLA and non-XLA draw the same numbers."""
    return low + (high - low) * _unit([batch], seed)


def randint(batch, seed, high):
    """Integers uniform in ``[0, high)``, ``[batch]``."""
    return tf.random.stateless_uniform([batch], seed, minval=0, maxval=high, dtype=tf.int32, alg=_ALG)


# Public functions skip AutoGraph: nothing here branches on tensors, and converting would only
# add seconds to every trace.
@tf.autograph.experimental.do_not_convert
def random_flip(images, seed):
    """Flips each image left-right with probability 1/2 (draw: ``uniform(B, seed, 0, 1) < 0.5``)."""
    shape = tf.shape(images)
    flip = uniform(shape[0], seed, 0.0, 1.0) < 0.5
    # A gather of per-image column orders: one pass, half the cost of reverse + select on CPU.
    columns = tf.range(shape[2])[None]
    columns = tf.where(flip[:, None], shape[2] - 1 - columns, columns)
    return tf.gather(images, columns, axis=2, batch_dims=1)


# --- Colour ops: per-image argument vectors ``[B]`` (or scalars). ---


def _per_image(value):
    return tf.reshape(tf.cast(value, tf.float32), [-1, 1, 1, 1])


def _blend(images, degenerate, factor):
    # PIL's ImageEnhance: degenerate + factor * (image - degenerate), written so
    # that factor 1 returns the image bit for bit.
    return tf.clip_by_value(images + (_per_image(factor) - 1.0) * (images - degenerate), 0.0, 255.0)


def _grey(images):
    # PIL's "L" conversion (ITU-R 601-2 luma), which its Color and Contrast use.
    return tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def auto_contrast(images):
    """Stretches each channel of each image to the full ``[0, 255]`` (PIL's ``autocontrast``, no cutoff)."""
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    scale = 255.0 / tf.maximum(high - low, 1e-3)
    return tf.where(high > low, tf.clip_by_value((images - low) * scale, 0.0, 255.0), images)


def posterize(images, bits):
    """Keeps the ``bits`` high bits of each (floored) pixel value; 8 bits return the image."""
    step = tf.pow(2.0, 8.0 - _per_image(bits))
    return tf.where(_per_image(bits) >= 8.0, images, tf.floor(images / step) * step)


def solarize(images, threshold):
    """Inverts (``255 - x``) every value at or above the image's threshold (PIL's ``solarize``)."""
    return tf.where(images >= _per_image(threshold), 255.0 - images, images)


def brightness(images, factor):
    """Scales each image by its factor (PIL's ``Brightness``: a blend with black)."""
    return _blend(images, 0.0, factor)


def color(images, factor):
    """Blends each image with its grey version (PIL's ``Color``, i.e. saturation)."""
    return _blend(images, _grey(images), factor)


def contrast(images, factor):
    """Blends each image with its mean grey level (PIL's ``Contrast``)."""
    return _blend(images, tf.reduce_mean(_grey(images), axis=[1, 2, 3], keepdims=True), factor)


def sharpness(images, factor):
    """Blends each image with its smoothed version (PIL's ``Sharpness``; the border row is kept)."""
    # PIL's SMOOTH kernel (1 around a centre of 5, over 13) as nine shifted slices, not a depthwise
    # convolution: with oneDNN on (TensorFlow's default on AVX-512 CPUs) that returns an empty
    # batch, which _by_group hands over whenever no image drew this op, with its input's shape.
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    smooth = 4.0 * images[:, 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            smooth += images[:, dy : height - 2 + dy, dx : width - 2 + dx]
    smooth /= 13.0
    # PIL keeps the border pixels unsmoothed: image - degenerate is 0 there.
    detail = tf.pad(images[:, 1:-1, 1:-1] - smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return tf.clip_by_value(images + (_per_image(factor) - 1.0) * detail, 0.0, 255.0)


_COLOUR_FUNCTIONS = {
    "auto_contrast": lambda images, _: auto_contrast(images),
    "posterize": posterize,
    "solarize": solarize,
    "color": color,
    "contrast": contrast,
    "brightness": brightness,
    "sharpness": sharpness,
}


# --- Geometric ops: output-to-input maps about the image centre, ``[B, 3, 3]``. ---


def inverse_map(arguments, height, width):
    """The float64 ``[B, 3, 3]`` maps from output to input pixel of geometric ops, about the centre.

    Args:
        arguments: A dict from names of :data:`GEOMETRIC_OPS` to ``[B]`` arguments; the map is
            of translate, then shear_y, shear_x and rotate (RandAugment gives each image one).
        height: Image height.
        width: Image width.

    Forward effects on the content (x right, y down): ``rotate`` turns it by ``a`` degrees
    counter-clockwise (PIL's ``rotate``); ``shear_x`` moves ``(x, y)`` to ``(x + a (y - cy), y)``;
    ``shear_y`` to ``(x, y + a (x - cx))``; ``translate_x`` / ``translate_y`` move it by ``a``
    times the width / height. timm shears about the top-left corner; about the centre the content
    stays in view.
    """
    # float64: grappler may reorder the sums below in a tf.function (in float32 that moved pixels
    # by 1e-3); in float64 that stays below float32's rounding: eager, tf.data and the step agree.
    width, height = tf.cast(width, tf.float64), tf.cast(height, tf.float64)
    zero = tf.zeros_like(tf.cast(next(iter(arguments.values())), tf.float64))
    a = {name: tf.cast(arguments.get(name, zero), tf.float64) for name in GEOMETRIC_OPS}
    radians = a["rotate"] * (math.pi / 180.0)
    cos, sin, sx, sy = tf.cos(radians), tf.sin(radians), a["shear_x"], a["shear_y"]
    # [[cos, -sin], [sin, cos]] @ [[1, -sx], [0, 1]] @ [[1, 0], [-sy, 1]]: each factor inverts its
    # op. With one op per image the others are exact identities (cos 0 = 1, sin 0 = 0).
    a00, a01 = cos * (1.0 + sx * sy) + sin * sy, -cos * sx - sin
    a10, a11 = sin * (1.0 + sx * sy) - cos * sy, cos - sin * sx
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a02 = cx - a00 * cx - a01 * cy - a["translate_x"] * width
    a12 = cy - a10 * cx - a11 * cy - a["translate_y"] * height
    rows = [[a00, a01, a02], [a10, a11, a12], [zero, zero, zero + 1.0]]
    return tf.stack([tf.stack(row, axis=1) for row in rows], axis=1)


def apply_maps(images, maps):
    """Resamples every image through its ``[3, 3]`` output-to-input map (bilinear, grey fill)."""
    transforms = tf.cast(tf.reshape(maps, [-1, 9])[:, :8], tf.float32)
    options = {"fill_value": FILL_VALUE, "interpolation": "BILINEAR", "fill_mode": "CONSTANT"}
    shape = tf.shape(images)[1:3]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape, **options
    )


def _geometric(name):
    def op(images, argument):
        shape = tf.shape(images)
        return apply_maps(images, inverse_map({name: argument}, shape[1], shape[2]))

    op.__name__ = name
    op.__doc__ = f"Applies ``{name}`` with a per-image argument (see :func:`inverse_map`)."
    return op


rotate, shear_x, shear_y = _geometric("rotate"), _geometric("shear_x"), _geometric("shear_y")
translate_x, translate_y = _geometric("translate_x"), _geometric("translate_y")


# --- RandAugment ---


def op_argument(name, magnitude, sign):
    """timm's argument of op ``name`` at ``magnitude`` (0..10 scale), per image.

    Args:
        name: One of :data:`OPS`.
        magnitude: Python float, ``0 <= magnitude <= MAX_MAGNITUDE``.
        sign: float32 ``[B]`` of +1/-1 (unsigned ops ignore it).

    Returns:
        float32 ``[B]``: degrees (rotate, up to 30), shear factor (0.3), fraction of the
        side (translate, 0.45), enhance factor ``max(0.1, 1 + sign * 0.9 m / 10)``,
        bits kept (posterize, 8 down to 4, at least 1) or threshold (solarize, 256 down to 0).
    """
    level = magnitude / _LEVEL_DENOM
    scale = {"rotate": 30.0, "shear_x": 0.3, "shear_y": 0.3, "translate_x": 0.45, "translate_y": 0.45}
    if name in scale:
        return sign * (scale[name] * level)
    if name in ("color", "contrast", "brightness", "sharpness"):
        return tf.maximum(0.1, 1.0 + sign * (0.9 * level))
    if name == "posterize":
        return tf.fill(tf.shape(sign), float(min(max(8 - math.floor(4 * level), 1), 8)))
    if name == "solarize":
        return tf.fill(tf.shape(sign), 256.0 - math.floor(256 * level))
    return tf.zeros_like(sign)


def sample_rand_augment(batch, seed, num_ops, probability=0.5, num_choices=None):
    """Draws every image's ops (indices below ``num_choices``, default ``len(OPS)``), applied flags, signs.

    Returns:
        A dict of ``[batch, num_ops]`` tensors: ``op`` (int32 index into the op list),
        ``applied`` (bool) and ``sign`` (float32 +1/-1).
    """
    seeds = split_seed(seed, 2)
    shape = [batch, num_ops]
    applied, sign = tf.unstack(_unit([2, batch * num_ops], seeds[1]))
    return {
        "op": tf.reshape(randint(batch * num_ops, seeds[0], num_choices or len(OPS)), shape),
        "applied": tf.reshape(applied < probability, shape),
        "sign": tf.reshape(tf.where(sign < 0.5, -1.0, 1.0), shape),
    }


def check_rand_augment(num_ops, magnitude, probability=0.5, ops=OPS):
    """Raises ``ValueError`` for arguments :func:`rand_augment` does not accept."""
    if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 1:
        raise ValueError(f"RandAugment num_ops must be an integer >= 1, got {num_ops!r}")
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE:g}], got {magnitude!r}")
    if not 0 <= probability <= 1:
        raise ValueError(f"RandAugment probability must be in [0, 1], got {probability!r}")
    if not ops or not set(ops) <= set(OPS):
        raise ValueError(f"RandAugment ops must be a non-empty subset of {OPS}, got {ops!r}")


@tf.autograph.experimental.do_not_convert
def rand_augment(images, seed, num_ops, magnitude, *, probability=0.5, ops=OPS):
    """timm-style RandAugment with per-image ops (``rand-m{magnitude}-n{num_ops}``).

    Args:
        images: float32 ``[B, H, W, 3]`` in ``[0, 255]``.
        seed: int ``[2]`` seed.
        num_ops: Ops drawn per image (with replacement), applied in order.
        magnitude: Strength on timm's 0..10 scale (up to :data:`MAX_MAGNITUDE`).
        probability: Chance that each drawn op is applied (timm: 0.5).
        ops: The op names to draw from (default: all of :data:`OPS`).

    Returns:
        float32 ``[B, H, W, 3]`` in ``[0, 255]``. Colour ops of all layers come
        first, then the composed geometric map of all layers (one resampling).
    """
    check_rand_augment(num_ops, magnitude, probability, ops)
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    draws = sample_rand_augment(shape[0], seed, num_ops, probability, len(ops))
    maps, moved = tf.eye(3, batch_shape=[shape[0]], dtype=tf.float64), tf.zeros([shape[0]], tf.bool)
    geometric = [name for name in ops if name in GEOMETRIC_OPS]
    for layer in range(num_ops):  # A static loop over layers, vectorized over images.
        sign = draws["sign"][:, layer]
        # Index len(ops) stands for "drawn but not applied": it passes through.
        choice = tf.where(draws["applied"][:, layer], draws["op"][:, layer], len(ops))
        arguments = [op_argument(name, magnitude, sign) for name in ops]
        if any(name in _COLOUR_FUNCTIONS for name in ops):
            colour = [_colour_function(name, argument) for name, argument in zip(ops, arguments, strict=True)]
            images = _by_group(images, choice, [*colour, _keep])
        if geometric:
            # One map per image and layer: the drawn op's argument, 0 (identity) for the others.
            chosen = {name: tf.zeros_like(sign) for name in geometric}
            for k, name in enumerate(ops):
                if name in GEOMETRIC_OPS:
                    chosen[name] += tf.where(tf.equal(choice, k), arguments[k], 0.0)
                    moved = tf.logical_or(moved, tf.equal(choice, k))
            # Op 1 then op 2 reads input(M1 @ M2 @ p): earlier layers multiply from the left.
            maps = tf.linalg.matmul(maps, inverse_map(chosen, shape[1], shape[2]))
    if geometric:
        # Only the images that drew a geometric op are resampled.
        resample = lambda part, index: apply_maps(part, tf.gather(maps, index))  # noqa: E731
        images = _by_group(images, tf.cast(moved, tf.int32), [_keep, resample])
    return images


def _keep(images, _):
    return images


def _colour_function(name, argument):
    if name not in _COLOUR_FUNCTIONS:
        return _keep
    return lambda images, positions: _COLOUR_FUNCTIONS[name](images, tf.gather(argument, positions))


def _by_group(images, group, functions):
    """Applies ``functions[k](images_k, positions_k)`` to the images of group k only.

    Two copies per image; every colour op on every image with masked selects took 207 ms
    instead of 11 ms (2 layers, 128 images of 56x56, the 2-core host).
    """
    positions = tf.range(tf.shape(images)[0])
    position_parts = tf.dynamic_partition(positions, group, len(functions))
    image_parts = tf.dynamic_partition(images, group, len(functions))
    outputs = [f(part, index) for f, part, index in zip(functions, image_parts, position_parts, strict=True)]
    return tf.ensure_shape(tf.dynamic_stitch(position_parts, outputs), images.shape)


# --- Random erasing ---


def sample_erasing(batch, seed, probability, height, width):
    """Draws each image's erasing rectangle (timm's RandomErasing, one rectangle, no retries).

    The area is uniform in :data:`ERASING_AREA` of the image, the aspect ratio (height / width)
    log-uniform in :data:`ERASING_ASPECT`; sides are rounded and clipped to the image (timm retries
    up to 10 times instead: a clipped rectangle only shrinks, and stays within the area range).

    Returns:
        A dict of ``[batch]`` tensors: ``erase`` (bool) and int32 ``top``, ``left``,
        ``height``, ``width``.
    """
    # One draw of five rows: every stateless call adds ~50 ops to the graph (seconds of tracing).
    erase, area, log_aspect, top, left = tf.unstack(_unit([5, batch], seed))
    area = (ERASING_AREA[0] + (ERASING_AREA[1] - ERASING_AREA[0]) * area) * float(height * width)
    low, high = math.log(ERASING_ASPECT[0]), math.log(ERASING_ASPECT[1])
    aspect = tf.exp(low + (high - low) * log_aspect)
    rect_h = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, float(height))
    rect_w = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, float(width))
    top = tf.floor(top * (float(height) - rect_h + 1.0))
    left = tf.floor(left * (float(width) - rect_w + 1.0))
    sides = {"top": top, "left": left, "height": rect_h, "width": rect_w}
    return {"erase": erase < probability, **{key: tf.cast(value, tf.int32) for key, value in sides.items()}}


@tf.autograph.experimental.do_not_convert
def random_erasing(images, seed, probability):
    """Erases one rectangle per image with probability ``probability`` (Zhong et al. 2017).

    The rectangle (see :func:`sample_erasing`) is filled with per-pixel noise, integers uniform
    in ``[0, 255]`` (timm's mode "pixel", normal noise of normalized images; ours are not).

    Returns:
        float32 ``[B, H, W, 3]`` in ``[0, 255]``.
    """
    if not 0 <= probability <= 1:
        raise ValueError(f"random erasing probability must be in [0, 1], got {probability!r}")
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(f"random_erasing needs a static image height and width, got shape {images.shape}")
    seeds = split_seed(seed, 2)
    rect = sample_erasing(tf.shape(images)[0], seeds[0], probability, height, width)
    rows, cols = tf.range(height)[None], tf.range(width)[None]
    in_rows = (rows >= rect["top"][:, None]) & (rows < (rect["top"] + rect["height"])[:, None])
    in_cols = (cols >= rect["left"][:, None]) & (cols < (rect["left"] + rect["width"])[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & rect["erase"][:, None, None]
    # Four noise bytes per random int32 (three used): a third of the draws of one per value. A
    # mask and select keep erasing XLA-compatible, with no data-dependent shapes.
    shape = tf.shape(images)
    bits = tf.random.stateless_uniform(
        shape[:3], seeds[1], minval=None, maxval=None, dtype=tf.int32, alg=_ALG
    )
    noise = tf.cast(tf.bitcast(bits, tf.uint8)[..., :3], tf.float32)
    return tf.where(mask[..., None], noise, images)
