"""The augmentation policies and their deterministic evaluation transform.

A policy may change the spatial size (``crop``: 64 -> 56). Its evaluation
transform (``crop``: the centre square) is applied to every evaluation,
serving, prediction and explanation input, so the model's input size is the
policy's output size (docs/design.md, section 2). The training-time random
augmentation of each policy lives in :mod:`trainer.augment`.
"""

POLICIES = ("book", "crop", "none")


def output_size(policy, image_size=64, crop_size=56):
    """Returns the side of the images a policy produces (the model's input size)."""
    check_policy(policy, image_size, crop_size)
    return crop_size if policy == "crop" else image_size


def eval_transform(policy, images, image_size=64, crop_size=56):
    """The deterministic evaluation transform of a policy.

    Args:
        policy: One of :data:`POLICIES`.
        images: float32 ``[B, H, W, 3]`` (or ``[H, W, 3]``) in ``[0, 255]``; a tensor or a numpy array.
        image_size: Side of the source images (used where the shape is not static).
        crop_size: Crop side of the ``crop`` policy.

    Returns:
        ``crop``: the centre ``crop_size`` square; other policies: ``images``.
    """
    check_policy(policy, image_size, crop_size)
    if policy != "crop":
        return images
    height, width = (dim if dim is not None else image_size for dim in images.shape[-3:-1])
    if height < crop_size or width < crop_size:
        raise ValueError(f"Cannot centre-crop {crop_size}px out of {height}x{width} images.")
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    return images[..., top : top + crop_size, left : left + crop_size, :]


def crop_offset(policy, image_size=64, crop_size=56):
    """Returns the pixel offset of the evaluation crop (0 when there is none); boxes shift by it."""
    check_policy(policy, image_size, crop_size)
    return (image_size - crop_size) // 2 if policy == "crop" else 0


def check_policy(policy, image_size, crop_size):
    """Raises ``ValueError`` for an unknown policy or a crop that does not fit the images."""
    if policy not in POLICIES:
        raise ValueError(f"Unknown augmentation policy {policy!r}; expected one of {POLICIES}.")
    if policy == "crop" and not 0 < crop_size <= image_size:
        raise ValueError(f"crop_size must be in [1, image_size={image_size}], got {crop_size}")
