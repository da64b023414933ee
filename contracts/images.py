"""Decoded images to 8-bit RGB: the one colour conversion of the job and of prediction.

The preprocessing job (re-encoding non-JPEG inputs) and ``trainer.predict``
(decoding any image a user passes) must turn the same file into the same
pixels, or the model sees in prediction what it never saw in training. PIL's
own ``convert("RGB")`` gets three cases wrong for this purpose: 16-bit
grayscale is clipped instead of scaled (a 16-bit PNG becomes almost all 255),
transparent pixels keep whatever colour hides under alpha 0 (often black), and
palette images with a transparent index lose their transparency.

Depends on PIL and numpy only (a contract: no project imports).
"""

import io

import numpy as np
from PIL import Image

# Pixels a header may announce before anything is decoded: far above tiny-imagenet's
# 64x64, far below what would exhaust a worker's memory (16.7M pixels, ~200 MB as
# 16-bit RGBA). PIL's own bomb check starts at 89M pixels and only warns below 179M.
MAX_PIXELS = 4096 * 4096

# 16-bit (and 32-bit integer) grayscale modes; scaled to 8 bits by dropping the low byte.
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# Modes with an alpha channel (``a`` = premultiplied); composited on white.
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Modes whose PIL conversion to RGB is exact or the standard one.
DIRECT_MODES = frozenset({"RGB", "RGBX", "L", "1", "CMYK", "YCbCr", "P"})
SUPPORTED_MODES = WIDE_GRAY_MODES | ALPHA_MODES | DIRECT_MODES
# The formats PIL may parse. Others are refused unread: some PIL plugins hand the
# file to external programs (EPS runs Ghostscript) or parse rarely-used
# containers; none of them holds a training image.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
WHITE = 255
# The refusal of too many pixels, in ``str.format``'s and ``tf.strings.format``'s "{}" placeholders
# (width, height, limit): PIL's check here and the export's graph check (contracts/decode.py) say the same.
TOO_MANY_PIXELS = "image of {}x{} pixels exceeds the limit of {} pixels (possible decompression bomb)"


class ImageTooLargeError(ValueError):
    """An image whose header announces more than :data:`MAX_PIXELS` pixels."""


def check_pixels(width, height, max_pixels=MAX_PIXELS):
    """Refuses an image size before decoding (a decompression bomb is small on disk).

    Raises:
        ImageTooLargeError: When ``width * height`` exceeds ``max_pixels``.
    """
    if width * height > max_pixels:
        raise ImageTooLargeError(TOO_MANY_PIXELS.format(width, height, max_pixels))


def open_image(data, max_pixels=MAX_PIXELS):
    """Opens encoded image bytes lazily (the header only) and refuses too many pixels.

    Args:
        data: The file's bytes.
        max_pixels: Most pixels the header may announce.

    Returns:
        An undecoded ``PIL.Image.Image`` (the caller closes it).

    Raises:
        ImageTooLargeError: When the header announces more than ``max_pixels`` pixels.
        PIL.UnidentifiedImageError: For bytes of no format in :data:`FORMATS`.
        Exception: Whatever PIL raises on a malformed header.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as error:  # PIL's own, far higher, limit.
        raise ImageTooLargeError(f"image exceeds the limit of {max_pixels} pixels ({error})") from None
    try:
        check_pixels(*image.size, max_pixels)
    except ImageTooLargeError:
        image.close()
        raise
    return image


def over_white(rgb, alpha):
    """Composites 8-bit colour values on white: the one formula of every decode.

    Integer "over" with rounding: alpha 255 keeps the pixel, alpha 0 gives white.
    Plain arithmetic, so numpy arrays (here) and TensorFlow tensors (the export's
    decode, :mod:`contracts.decode`) compute it alike.

    Args:
        rgb: Colour values in ``[0, 255]`` (``[..., 3]``), of an integer type at least 32 bits wide.
        alpha: Alpha values in ``[0, 255]`` (``[..., 1]``), of the same type.

    Returns:
        The composited values, of the inputs' type.
    """
    return (rgb * alpha + WHITE * (255 - alpha) + 127) // 255


def _wide_gray(image):
    # Mode "I" is 32-bit signed; PNG and TIFF decode 16-bit gray into it (or into I;16*),
    # so its range is taken as 0..65535, and values outside it are clipped.
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 0xFFFF)
    gray = np.repeat((values >> 8)[..., np.newaxis], 3, axis=-1)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        # A 16-bit PNG's tRNS gray level (compared at 16 bits, as libpng does): white there.
        gray = np.where((values == transparent)[..., np.newaxis], WHITE, gray)
    return gray.astype(np.uint8)


def _on_white(rgba):
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return over_white(rgb, alpha).astype(np.uint8)


def to_rgb(image):
    """Converts a PIL image of any supported mode to uint8 RGB pixels.

    16-bit grayscale (``I;16``, ``I;16B``, ``I``) is scaled by ``>> 8`` (its transparent
    gray level, if any, becomes white);
    images with alpha (``RGBA``, ``LA``, ``PA``, or a transparent colour such
    as a palette's transparent index) are composited on white; ``P``, ``L``, ``1``, ``CMYK`` and
    ``YCbCr`` use PIL's standard conversion. Decodes the image if it is not
    decoded yet: call :func:`check_pixels` first.

    Args:
        image: A ``PIL.Image.Image``.

    Returns:
        ``np.ndarray`` of shape ``[height, width, 3]``, dtype uint8.

    Raises:
        ValueError: For a mode with no defined conversion (e.g. float ``F``).
    """
    mode = image.mode
    if mode not in SUPPORTED_MODES:
        raise ValueError(f"colour mode {mode} has no defined conversion to 8-bit RGB")
    if mode in WIDE_GRAY_MODES:
        return _wide_gray(image)
    # A transparent colour (PNG tRNS: palette, gray or RGB) is alpha too.
    if mode in ALPHA_MODES or "transparency" in image.info:
        return _on_white(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"))
