"""The one resize policy: any image, any aspect -> a square ``S x S`` image, the same everywhere.

The preprocessing job resizes every source image with :func:`resize` before
writing its record, and ``trainer.predict``, the export's serving signature and
its explain signature resize their inputs with the same function, so a model
never sees in prediction a geometry it did not see in training (the train/serve
skew of ultralytics#1325). The policy and the size are recorded in
``metadata.json`` and travel with the model.

Policies (``--resize``):

* ``crop`` (the default): the centre square of the source (the shorter side
  long) is cut out and scaled to ``S`` (Keras ``crop_to_aspect_ratio``; the
  same picture as scaling the shorter side to ``S`` and cutting the centre, at
  a cost bounded by the source whatever its aspect);
* ``pad``: the longer side is scaled to ``S`` and the rest is filled with
  :data:`PAD_FILL` (black), centred (a letterbox, Keras ``pad_to_aspect_ratio``);
* ``stretch``: both sides are scaled to ``S``; the aspect ratio is lost.

Scaling is bilinear with antialiasing (a box-like filter when shrinking, so a
1024x768 photo does not alias at 64 px). The output is rounded to uint8: the
job stores those pixels (as JPEG) and the serving paths feed them to the model,
so every path ends in the same 8-bit image. An image already ``S x S`` is
returned unchanged by every policy.

:func:`geometry` is the arithmetic both :func:`resize` and :func:`resize_box`
follow (integers only, so Python and TensorFlow agree to the pixel).
"""

import collections
import functools

import tensorflow as tf

POLICIES = ("crop", "pad", "stretch")
DEFAULT_POLICY = "crop"
# The letterbox's fill (black): what Keras' pad_to_aspect_ratio pads with.
PAD_FILL = 0

Geometry = collections.namedtuple(
    "Geometry",
    [
        "window_top",
        "window_left",
        "window_height",
        "window_width",
        "scaled_height",
        "scaled_width",
        "top",
        "left",
    ],
)
Geometry.__doc__ = """How one source image becomes the ``S x S`` output: cut a window, scale it, place it.

Attributes:
    window_top: First source row used (``crop`` cuts the centre square; others use every row).
    window_left: First source column used.
    window_height: Source rows used.
    window_width: Source columns used.
    scaled_height: Height of the window after scaling.
    scaled_width: Width of the window after scaling.
    top: Output row at which the scaled window starts (``pad``'s band above; else 0).
    left: The same for columns.
"""


def check_policy(policy):
    """Raises ``ValueError`` naming the choices for an unknown policy."""
    if policy not in POLICIES:
        raise ValueError(f"resize policy must be one of {', '.join(POLICIES)}, got {policy!r}")


def _scaled(side, size, reference):
    # round(side * size / reference), halves up, in integers: the same in Python and TensorFlow.
    return (2 * side * size + reference) // (2 * reference)


def policy_of(metadata):
    """The policy a dataset's ``metadata.json`` records; ``crop`` for one written before the key
    (every such dataset is ``S x S``, which each policy leaves unchanged)."""
    return (metadata.get("resize") or {}).get("policy", DEFAULT_POLICY)


def geometry(height, width, size, policy=DEFAULT_POLICY):
    """Where a ``height x width`` source lands in the ``size`` output.

    ``crop`` cuts the centre square of the source first and scales only that, so no
    policy ever holds more than ``max(S, source)`` pixels a side: a 1 x 16M-pixel strip
    costs what its pixels cost, not a scaled copy 64 pixels high and a billion long.

    Args:
        height: Source height in pixels (>= 1).
        width: Source width in pixels (>= 1).
        size: Output side ``S``.
        policy: One of :data:`POLICIES`.

    Returns:
        A :class:`Geometry`.
    """
    check_policy(policy)
    if policy == "crop":
        side = min(height, width)
        # Centred; an odd leftover goes below / right, as tf.image's central crop does.
        return Geometry((height - side) // 2, (width - side) // 2, side, side, size, size, 0, 0)
    if policy == "stretch":
        return Geometry(0, 0, height, width, size, size, 0, 0)
    longer = max(height, width)
    scaled_height = max(1, _scaled(height, size, longer))
    scaled_width = max(1, _scaled(width, size, longer))
    top, left = (size - scaled_height) // 2, (size - scaled_width) // 2
    return Geometry(0, 0, height, width, scaled_height, scaled_width, top, left)


def resize(image, size, policy=DEFAULT_POLICY):
    """Resizes one image to ``[size, size, 3]`` uint8 by ``policy``.

    Works eagerly (the preprocessing job, ``trainer.predict``) and inside a
    ``tf.function`` of unknown input shape (the export's signatures).

    Args:
        image: ``[H, W, 3]`` uint8 (or float in ``[0, 255]``) tensor or array.
        size: Output side ``S`` (a Python int).
        policy: One of :data:`POLICIES`.

    Returns:
        A ``[size, size, 3]`` uint8 tensor.
    """
    check_policy(policy)
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image, out_type=tf.int64)
    height, width = shape[0], shape[1]

    def scaled():
        pixels = tf.cast(image, tf.float32)
        if policy == "crop":
            side = tf.minimum(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            pixels = pixels[top : top + side, left : left + side]
            target = tf.stack([tf.constant(size, tf.int64)] * 2)
        elif policy == "stretch":
            target = tf.stack([tf.constant(size, tf.int64)] * 2)
        else:
            longer = tf.maximum(height, width)
            target = tf.maximum(tf.stack([_scaled(height, size, longer), _scaled(width, size, longer)]), 1)
        pixels = _to_uint8(tf.image.resize(pixels, tf.cast(target, tf.int32), antialias=True))
        if policy == "pad":
            target = tf.cast(target, tf.int32)
            top, left = (size - target[0]) // 2, (size - target[1]) // 2
            bands = [[top, size - target[0] - top], [left, size - target[1] - left], [0, 0]]
            return tf.pad(pixels, bands, constant_values=PAD_FILL)
        return pixels

    def unchanged():
        return _to_uint8(image)

    already = tf.logical_and(tf.equal(height, size), tf.equal(width, size))
    return tf.ensure_shape(tf.cond(already, unchanged, scaled), [size, size, 3])


@functools.cache
def compiled(size, policy=DEFAULT_POLICY):
    """:func:`resize` as a ``tf.function`` traced once for every ``[H, W, 3]`` uint8 input.

    The same function, without eager dispatch per operation: about 5x faster
    per image than calling :func:`resize` eagerly (the preprocessing job's
    loop over thousands of images). One function per ``(size, policy)``.

    Args:
        size: Output side ``S``.
        policy: One of :data:`POLICIES`.

    Returns:
        A callable ``image -> [size, size, 3] uint8 tensor``.
    """
    check_policy(policy)
    return tf.function(
        lambda image: resize(image, size, policy),
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
        autograph=False,  # resize branches with tf.cond itself; nothing to convert.
    )


def _to_uint8(pixels):
    # Rounded, not truncated: a float input already S x S ends as the same bytes as a resized one would.
    if pixels.dtype == tf.uint8:
        return pixels
    return tf.cast(tf.clip_by_value(tf.round(tf.cast(pixels, tf.float32)), 0.0, 255.0), tf.uint8)


def resize_box(box, height, width, size, policy=DEFAULT_POLICY):
    """Moves an inclusive pixel box ``(xmin, ymin, xmax, ymax)`` with the image.

    The box's pixel edges are scaled and shifted as :func:`resize` moves the
    pixels, rounded outwards (a box never shrinks off its object), and clipped to
    the output. A box that ``crop`` cuts away entirely becomes ``None``.

    Args:
        box: ``(xmin, ymin, xmax, ymax)`` in source pixels, inclusive, or ``None``.
        height: Source height.
        width: Source width.
        size: Output side.
        policy: One of :data:`POLICIES`.

    Returns:
        The box in output pixels, or ``None``.
    """
    if box is None:
        return None
    if height == size and width == size:
        return tuple(box)
    shape = geometry(height, width, size, policy)
    xmin, ymin, xmax, ymax = box

    def edges(low, high, first, used, scaled, offset):
        # Pixel i covers [i, i + 1); window edges scale exactly by scaled / used (integers).
        start = ((low - first) * scaled) // used + offset
        end = -((-(high + 1 - first) * scaled) // used) + offset  # ceil
        return max(start, 0), min(end, size) - 1

    new_xmin, new_xmax = edges(
        xmin, xmax, shape.window_left, shape.window_width, shape.scaled_width, shape.left
    )
    new_ymin, new_ymax = edges(
        ymin, ymax, shape.window_top, shape.window_height, shape.scaled_height, shape.top
    )
    if new_xmin > new_xmax or new_ymin > new_ymax:
        return None
    return (new_xmin, new_ymin, new_xmax, new_ymax)
