"""Validation of one image file: keep good JPEGs as they are, re-encode the rest.

The trainer decodes every record with ``tf.io.decode_jpeg(channels=3)``, so a
record is good when its bytes are a complete JPEG whose colour space converts
to three channels (RGB, grayscale, CMYK). Good JPEG bytes are kept unchanged;
other decodable formats (ImageNet has PNGs named ``.JPEG``) are converted to
RGB and re-encoded. Everything else raises :class:`BadImageError` with a reason that
ends up in the dead-letter file.
"""

import collections
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
# JPEG colour modes PIL reports that decode_jpeg(channels=3) converts to RGB.
JPEG_MODES = frozenset({"RGB", "L", "CMYK"})
REENCODE_QUALITY = 95

ValidImage = collections.namedtuple("ValidImage", ["data", "height", "width", "reencoded_from"])
ValidImage.__doc__ = """A validated image.

Attributes:
    data: JPEG bytes to store (the original bytes unless re-encoded).
    height: Height in pixels.
    width: Width in pixels.
    reencoded_from: Original format name when the image was re-encoded, else ``None``.
"""


class BadImageError(ValueError):
    """An input file that cannot become a training record; the message is the reason."""


# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4/C8/CC are not frames.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Components that decode_jpeg(channels=3) turns into RGB: gray, YCbCr/RGB, CMYK/YCCK.
JPEG_COMPONENTS = frozenset({1, 3, 4})


def jpeg_header(data):
    """Reads ``(height, width, components)`` from a JPEG's frame header, or ``None``.

    A walk over the marker segments: a few microseconds per file, where a full
    PIL open parses every table in Python. ``None`` means "not a plain JPEG
    header", and the caller falls back to PIL for the verdict.
    """
    if not data.startswith(JPEG_SOI):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in SOF_MARKERS:
            if pos + 10 > end or length < 8:
                return None
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            return height, width, data[pos + 9]
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        pos += 2 + length
    return None


def _ends_with_eoi(data):
    # Some encoders pad after the end-of-image marker; padding is harmless.
    return data.rstrip(b"\x00\r\n \t").endswith(JPEG_EOI)


def _open(data):
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImageError(f"unreadable image header: {error}") from None


def _check_jpeg(data, image):
    if image.mode not in JPEG_MODES:
        raise BadImageError(f"JPEG colour mode {image.mode} does not convert to 3 channels")
    # Cheap path: a parsable header plus the end marker means a complete file.
    # Without the marker the file may be truncated, or just carry trailing
    # bytes: only a full decode tells.
    if not _ends_with_eoi(data):
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as error:
            raise BadImageError(f"truncated or corrupt JPEG: {error}") from None
    width, height = image.size
    return ValidImage(data, height, width, None)


def _reencode(image):
    original = image.format or "unknown"
    try:
        image.load()
        rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImageError(f"undecodable {original} image: {error}") from None
    pixels = np.asarray(rgb)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise BadImageError(f"{original} image does not convert to 3 channels (shape {pixels.shape})")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=REENCODE_QUALITY)
    height, width = pixels.shape[:2]
    return ValidImage(buffer.getvalue(), height, width, original)


def validate_image(data, expected_size=None):
    """Checks one encoded image and returns what to store.

    Args:
        data: The file's bytes.
        expected_size: Optional ``(height, width)`` every image must have.

    Returns:
        A :class:`ValidImage`.

    Raises:
        BadImageError: When the file is empty, not an image, truncated, cannot be
            converted to three channels, or has the wrong size.
    """
    if not data:
        raise BadImageError("empty file")
    header = jpeg_header(data)
    if header and header[0] and header[1] and header[2] in JPEG_COMPONENTS and _ends_with_eoi(data):
        # Fast path for the common case: a complete JPEG with a usable frame header.
        result = ValidImage(data, header[0], header[1], None)
    else:
        image = _open(data)
        if data.startswith(JPEG_SOI) and image.format == "JPEG":
            result = _check_jpeg(data, image)
        else:
            result = _reencode(image)
    if expected_size is not None and (result.height, result.width) != tuple(expected_size):
        raise BadImageError(
            f"size {result.width}x{result.height}, expected {expected_size[1]}x{expected_size[0]}"
        )
    return result
