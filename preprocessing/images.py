"""Validation of one image file: keep good ``S x S`` JPEGs as they are, resize and re-encode the rest.

The trainer decodes every record with :func:`contracts.schema.decode_jpeg`, so a
record is good when its bytes are an ``S x S`` JPEG whose colour space
converts to three channels (RGB, grayscale, CMYK) and which that decoder
decodes in full. Such bytes are kept unchanged, after one full decode with
the trainer's own decoder (:func:`decode_failures`, many files per call): a
file the trainer could not read (headers and an end marker but no scan data,
a truncated scan) is a dead letter here, not a crash of every training run.
Every other
decodable image (another size, or another format: ImageNet has PNGs named
``.JPEG``) is converted to RGB by :func:`contracts.images.to_rgb` (the
conversion ``trainer.predict`` uses too), made ``S x S`` by
:func:`contracts.resize.resize` (the one resize of training and serving) and
re-encoded. The pixel cap is checked from the header, before anything is
decoded. Everything else raises :class:`BadImageError` with a reason that ends
up in the dead-letter file: no input, however hostile, raises anything else.
"""

import collections
import functools
import io

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from contracts import images as rgb_images
from contracts import resize, schema

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
# Start of scan: a JPEG without one has no pixels (the decoder would fail; refused without it).
JPEG_SOS = b"\xff\xda"
# Kept JPEGs decoded per TensorFlow call (decode_failures): one call per file costs several times the
# decode of a 64x64 image itself (docs/preprocessing.md, "Performance").
DECODE_BATCH = 256
UNDECODABLE = "truncated or corrupt JPEG: the trainer's decoder (contracts.schema.decode_jpeg) fails on it"
NO_SCAN = "truncated or corrupt JPEG: no scan data (no start-of-scan marker)"
# JPEG colour modes PIL reports that decode_jpeg(channels=3) converts to RGB.
JPEG_MODES = frozenset({"RGB", "L", "CMYK"})
REENCODE_QUALITY = 95
# A 64x64 JPEG is a few kB; a file this large is no image the job wants, and
# reading it whole would only risk a worker's memory.
MAX_FILE_BYTES = 64 << 20
MAX_PIXELS = rgb_images.MAX_PIXELS

ValidImage = collections.namedtuple(
    "ValidImage", ["data", "height", "width", "reencoded_from", "source_height", "source_width"]
)
ValidImage.__doc__ = """A validated image.

Attributes:
    data: JPEG bytes to store (the original bytes unless re-encoded).
    height: Height of the stored image in pixels.
    width: Width of the stored image in pixels.
    reencoded_from: Original format name when the stored bytes are not the
        file's (converted, resized or both), else ``None``.
    source_height: Height of the file's image, as its header announced it.
    source_width: Width of the file's image.
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


def _check_pixels(width, height):
    try:
        rgb_images.check_pixels(width, height, MAX_PIXELS)
    except rgb_images.ImageTooLargeError as error:
        raise BadImageError(str(error)) from None


def _fits(height, width, size):
    return size is None or height == width == size


def _open(data):
    # The header only, with the pixel cap checked before any decoding.
    try:
        return rgb_images.open_image(data, MAX_PIXELS)
    except UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised format)") from None
    except rgb_images.ImageTooLargeError as error:
        raise BadImageError(str(error)) from None
    except Exception as error:  # any parser failure is this file's fault
        raise BadImageError(f"unreadable image header: {type(error).__name__}: {error}") from None


@functools.cache
def _batch_shapes():
    """A TensorFlow function: JPEG bytes ``[N]`` -> their decoded shapes ``[N, 3]`` (traced once per process).

    One call decodes the whole batch in graph (``map_fn``, files in parallel):
    per file that costs a fraction of an eager ``decode_jpeg`` call, whose
    overhead is several times the decode of a 64x64 image. Any file that does
    not decode fails the whole call.
    """

    def shape(data):
        return tf.shape(schema.decode_jpeg(data), out_type=tf.int32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def shapes(data):
        spec = tf.TensorSpec([3], tf.int32)
        return tf.map_fn(shape, data, fn_output_signature=spec, parallel_iterations=16)

    return shapes


def _decoded_shape(data):
    try:
        return tuple(schema.decode_jpeg(data).shape)
    except Exception:  # tf.errors.InvalidArgumentError, mostly: this file's fault
        return None


def decode_failures(kept):
    """Decodes JPEGs that are kept as they are, in full, with the trainer's decoder.

    :func:`contracts.schema.decode_jpeg` is what reads every record in
    training, so "this decode succeeds" is exactly "no training run fails on
    this record". A header and an end marker prove nothing about the scan data
    between them. The batch is decoded in one call; when a file in it fails,
    each file is decoded alone to find which (rare: a few bad files cost a
    batch of single decodes each).

    Args:
        kept: :class:`ValidImage` s whose bytes are kept (``reencoded_from`` is ``None``); the
            Beam job passes :data:`DECODE_BATCH` at a time.

    Returns:
        ``{position in kept: reason}`` of those that fail to decode, or decode to another shape
        than their header announced.
    """
    shapes = None
    if len(kept) > 1:
        try:
            shapes = [tuple(shape) for shape in _batch_shapes()(tf.constant([k.data for k in kept])).numpy()]
        except Exception:  # One file or more does not decode: the loop below finds which.
            shapes = None
    if shapes is None:
        shapes = [_decoded_shape(image.data) for image in kept]
    failures = {}
    for position, (shape, image) in enumerate(zip(shapes, kept, strict=True)):
        if shape is None:
            failures[position] = UNDECODABLE
        elif shape != (image.height, image.width, 3):
            failures[position] = (
                f"JPEG decodes to another size than its header's {image.width}x{image.height}"
            )
    return failures


def _check_jpeg(data, image):
    if image.mode not in JPEG_MODES:
        raise BadImageError(f"JPEG colour mode {image.mode} does not convert to 3 channels")
    if JPEG_SOS not in data:
        raise BadImageError(NO_SCAN)
    width, height = image.size
    return ValidImage(data, height, width, None, height, width)


def _reencode(image, size, policy):
    original = image.format or "unknown"
    source_width, source_height = image.size
    if image.mode not in rgb_images.SUPPORTED_MODES:
        raise BadImageError(f"{original} colour mode {image.mode} does not convert to 3 channels")
    try:
        image.load()
        pixels = rgb_images.to_rgb(image)
    except Exception as error:  # any decoder failure is this file's fault
        raise BadImageError(f"undecodable {original} image: {error}") from None
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise BadImageError(f"{original} image does not convert to 3 channels (shape {pixels.shape})")
    if size is not None:
        pixels = resize.compiled(size, policy)(pixels).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=REENCODE_QUALITY)
    height, width = pixels.shape[:2]
    return ValidImage(buffer.getvalue(), height, width, original, source_height, source_width)


def validate_image(data, size=None, policy=resize.DEFAULT_POLICY, decode=True):
    """Checks one encoded image and returns what to store, ``size x size`` when ``size`` is given.

    The size the header announces is checked before any pixel is decoded:
    more than :data:`MAX_PIXELS` pixels (a decompression bomb) is refused
    unread. A JPEG that is already ``size x size`` is returned as it is once it
    decodes in full with the trainer's decoder (:func:`decode_failures`); any
    other image is decoded, resized by ``policy`` and re-encoded.

    Args:
        data: The file's bytes.
        size: Side ``S`` of the square every stored image has, or ``None`` to keep each image's size.
        policy: How a non-square or other-sized image becomes ``S x S``
            (:data:`contracts.resize.POLICIES`).
        decode: Whether to decode kept bytes here; ``False`` leaves it to the caller, which then
            passes every kept :class:`ValidImage` to :func:`decode_failures` (the Beam job does, a
            batch at a time).

    Returns:
        A :class:`ValidImage`.

    Raises:
        BadImageError: When the file is empty or too large, not an image,
            announces too many pixels, is truncated, or cannot be converted
            to three channels. Nothing else.
    """
    result = _validate(data, size, policy)
    if decode and result.reencoded_from is None:
        failures = decode_failures([result])
        if failures:
            raise BadImageError(failures[0])
    return result


def _validate(data, size, policy):
    if not data:
        raise BadImageError("empty file")
    if len(data) > MAX_FILE_BYTES:
        raise BadImageError(f"file exceeds the limit of {MAX_FILE_BYTES} bytes")
    header = jpeg_header(data)
    if header:
        height, width, components = header
        _check_pixels(width, height)
        complete = height and width and components in JPEG_COMPONENTS and _ends_with_eoi(data)
        if complete and _fits(height, width, size):
            # Fast path for the common case: an S x S JPEG with a usable frame header, kept as it is
            # (once decoded in full: decode_failures). A scan is needed for pixels at all: without one
            # the file is refused here, without a decoder (which would print libjpeg's complaint).
            if JPEG_SOS not in data:
                raise BadImageError(NO_SCAN)
            return ValidImage(data, height, width, None, height, width)
    image = _open(data)
    try:
        width, height = image.size
        if _fits(height, width, size) and data.startswith(JPEG_SOI) and image.format == "JPEG":
            return _check_jpeg(data, image)
        return _reencode(image, size, policy)
    finally:
        image.close()
