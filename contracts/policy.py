"""The augmentation policies and their deterministic evaluation transform.

A policy may change the spatial size (``crop``: 64 -> 56, the book's crop;
images of side ``S`` get :data:`CROP_FRACTION` of it by default). Its evaluation
transform (``crop``: the centre square) is applied to every evaluation,
serving, prediction and explanation input, so the model's input size is the
policy's output size (docs/design.md, section 2). The training-time random
augmentation of each policy lives in :mod:`trainer.augment`.
"""

POLICIES = ("book", "crop", "none")
# The book's 56-px crops of 64-px images, as a fraction: the crop keeps this much of any image size.
CROP_FRACTION = 7 / 8


def default_crop_size(image_size):
    """Returns the ``crop`` policy's side for images of side ``image_size``: round(S * 7 / 8)."""
    return max(1, round(image_size * CROP_FRACTION))


def resolve_crop_size(image_size, crop_size=None):
    """Returns ``crop_size``, or :func:`default_crop_size` of ``image_size`` when it is ``None``."""
    return default_crop_size(image_size) if crop_size is None else crop_size


def output_size(policy, image_size=64, crop_size=None):
    """Returns the side of the images a policy produces (the model's input size)."""
    crop_size = resolve_crop_size(image_size, crop_size)
    check_policy(policy, image_size, crop_size)
    return crop_size if policy == "crop" else image_size


def eval_transform(policy, images, image_size=64, crop_size=None):
    """The deterministic evaluation transform of a policy.

    Args:
        policy: One of :data:`POLICIES`.
        images: float32 ``[B, H, W, 3]`` (or ``[H, W, 3]``) in ``[0, 255]``; a tensor or a numpy array.
        image_size: Side of the source images (used where the shape is not static).
        crop_size: Crop side of the ``crop`` policy; ``None``: :func:`default_crop_size`.

    Returns:
        ``crop``: the centre ``crop_size`` square; other policies: ``images``.
    """
    crop_size = resolve_crop_size(image_size, crop_size)
    check_policy(policy, image_size, crop_size)
    if policy != "crop":
        return images
    height, width = (dim if dim is not None else image_size for dim in images.shape[-3:-1])
    if height < crop_size or width < crop_size:
        raise ValueError(f"Cannot centre-crop {crop_size}px out of {height}x{width} images.")
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    return images[..., top : top + crop_size, left : left + crop_size, :]


def crop_offset(policy, image_size=64, crop_size=None):
    """Returns the pixel offset of the evaluation crop (0 when there is none); boxes shift by it."""
    crop_size = resolve_crop_size(image_size, crop_size)
    check_policy(policy, image_size, crop_size)
    return (image_size - crop_size) // 2 if policy == "crop" else 0


def check_policy(policy, image_size, crop_size=None):
    """Raises ``ValueError`` for an unknown policy or a crop that does not fit the images."""
    crop_size = resolve_crop_size(image_size, crop_size)
    if policy not in POLICIES:
        raise ValueError(f"Unknown augmentation policy {policy!r}; expected one of {POLICIES}.")
    if policy == "crop" and not 0 < crop_size <= image_size:
        raise ValueError(f"crop_size must be in [1, image_size={image_size}], got {crop_size}")
