"""The one resize policy: any image, any aspect -> a square ``S x S`` image, the same everywhere.

The preprocessing job resizes every source image with :func:`resize` before
writing its record, and ``trainer.predict``, the export's serving signature and
its explain signature resize their inputs with the same function, so a model
never sees in prediction a geometry it did not see in training (the train/serve
skew of ultralytics#1325). The policy and the size are recorded in
``metadata.json`` and travel with the model.

Policies (``--resize``):

* ``crop`` (the default): the shorter side is scaled to ``S``, then the centre
  ``S x S`` is cut out (Keras ``crop_to_aspect_ratio``; timm's eval transform);
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

import tensorflow as tf

POLICIES = ("crop", "pad", "stretch")
DEFAULT_POLICY = "crop"
# The letterbox's fill (black): what Keras' pad_to_aspect_ratio pads with.
PAD_FILL = 0

Geometry = collections.namedtuple("Geometry", ["scaled_height", "scaled_width", "top", "left"])
Geometry.__doc__ = """Where the scaled image lands in the ``S x S`` output.

Attributes:
    scaled_height: Height of the source after scaling.
    scaled_width: Width of the source after scaling.
    top: Row of the output at which the scaled image starts: negative when
        ``crop`` cuts rows off, positive when ``pad`` adds a band above.
    left: The same for columns.
"""


def check_policy(policy):
    """Raises ``ValueError`` naming the choices for an unknown policy."""
    if policy not in POLICIES:
        raise ValueError(f"resize policy must be one of {', '.join(POLICIES)}, got {policy!r}")


def _scaled(side, size, reference):
    # round(side * size / reference), halves up, in integers: the same in Python and TensorFlow.
    return (2 * side * size + reference) // (2 * reference)


def geometry(height, width, size, policy=DEFAULT_POLICY):
    """The scaled size and the offset of a ``height x width`` source in the ``size`` output.

    Args:
        height: Source height in pixels (>= 1).
        width: Source width in pixels (>= 1).
        size: Output side ``S``.
        policy: One of :data:`POLICIES`.

    Returns:
        A :class:`Geometry`.
    """
    check_policy(policy)
    if policy == "stretch":
        return Geometry(size, size, 0, 0)
    reference = min(height, width) if policy == "crop" else max(height, width)
    scaled_height = max(1, _scaled(height, size, reference))
    scaled_width = max(1, _scaled(width, size, reference))
    # Centred; an odd leftover goes below / right (as tf.image's central crop and pad do).
    return Geometry(scaled_height, scaled_width, (size - scaled_height) // 2, (size - scaled_width) // 2)


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
        if policy == "stretch":
            target = tf.stack([tf.constant(size, tf.int64)] * 2)
        else:
            reference = tf.minimum(height, width) if policy == "crop" else tf.maximum(height, width)
            target = tf.maximum(
                tf.stack([_scaled(height, size, reference), _scaled(width, size, reference)]), 1
            )
        pixels = tf.image.resize(tf.cast(image, tf.float32), tf.cast(target, tf.int32), antialias=True)
        pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
        target = tf.cast(target, tf.int32)
        if policy == "crop":
            return tf.image.crop_to_bounding_box(
                pixels, (target[0] - size) // 2, (target[1] - size) // 2, size, size
            )
        if policy == "pad":
            # pad_to_bounding_box fills with zeros: PAD_FILL.
            return tf.image.pad_to_bounding_box(
                pixels, (size - target[0]) // 2, (size - target[1]) // 2, size, size
            )
        return pixels

    def unchanged():
        return tf.cast(image, tf.uint8)

    already = tf.logical_and(tf.equal(height, size), tf.equal(width, size))
    return tf.ensure_shape(tf.cond(already, unchanged, scaled), [size, size, 3])


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
    scaled_height, scaled_width, top, left = geometry(height, width, size, policy)
    xmin, ymin, xmax, ymax = box

    def edges(low, high, scaled, source, offset):
        # Pixel i covers [i, i + 1); its edges scale exactly by scaled / source (integers).
        start = (low * scaled) // source + offset
        end = -((-(high + 1) * scaled) // source) + offset  # ceil
        return max(start, 0), min(end, size) - 1

    new_xmin, new_xmax = edges(xmin, xmax, scaled_width, width, left)
    new_ymin, new_ymax = edges(ymin, ymax, scaled_height, height, top)
    if new_xmin > new_xmax or new_ymin > new_ymax:
        return None
    return (new_xmin, new_ymin, new_xmax, new_ymax)
