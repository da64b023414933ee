"""The one TensorFlow decode of encoded image bytes: the pixels PIL gives the Beam job and ``predict``.

The preprocessing job and ``trainer.predict`` decode with PIL and convert with
:func:`contracts.images.to_rgb`; the export's signatures decode in graph ops.
:func:`decode_image` is that graph decode, written to give the very same uint8 RGB
pixels (tests/contracts/test_decode_parity.py compares them format by format):

* JPEG: libjpeg's accurate integer DCT (:func:`contracts.schema.decode_jpeg`), gray
  replicated to RGB, CMYK converted as PIL converts it.
* PNG: every bit depth decoded to 16 bits and cut to 8 by ``>> 8`` (PIL keeps the
  high byte of 16-bit samples); alpha (RGBA, gray + alpha, a palette's or a
  colour's tRNS transparency) composited on white by :func:`contracts.images.over_white`.
* GIF: the first frame, refused unless it covers the whole canvas (TensorFlow returns
  it at its own size). A transparent colour index becomes white: its colour-table
  entry is rewritten to white and the transparency flag cleared before decoding
  (TensorFlow's decoder paints transparent pixels black).
* BMP: uncompressed 24-bit and 32-bit files (the fourth byte ignored, as PIL reads
  ``BGRX``); other BMPs (palettes, bit fields, run-length encoding) are refused:
  TensorFlow reads a palette's indices as gray levels, PIL their colours.
* WebP: libwebp on both sides, alpha composited on white; an animation's first frame.

The pixel cap (:data:`contracts.images.MAX_PIXELS`, the one constant) is checked
from the header, before anything is decoded: a 400 kB PNG of 12000x12000 pixels
is refused unread, as PIL's path refuses it. A GIF's later frames are decoded too
(TensorFlow's decoder reads every frame, then keeps the first): their cost is
bounded by the file's bytes, not by the cap. The walks over PNG chunks (for tRNS)
and GIF blocks (for the first frame's transparency) stop at :data:`WALK_LIMIT`
steps: a file crafted with more is refused.

Failures raise ``tf.errors.InvalidArgumentError`` (the checks here are
``tf.debugging.Assert`` ops); :func:`error_message` turns one into the line that
says what failed.
"""

import re

import tensorflow as tf

from contracts import images, schema

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
# PNG colour types with an alpha channel (gray + alpha, RGBA); chunk types as big-endian numbers:
# a tRNS (transparency) chunk, and the first chunks after which none can come (image data, end).
PNG_ALPHA_TYPES = (4, 6)
PNG_TRNS = int.from_bytes(b"tRNS", "big")
PNG_LAST = (int.from_bytes(b"tRNS", "big"), int.from_bytes(b"IDAT", "big"), int.from_bytes(b"IEND", "big"))
BMP_SIGNATURE = b"BM"
WEBP_SIGNATURE = b"WEBP"  # After "RIFF" and the file's size.
FORMATS = "JPEG, PNG, GIF, BMP or WebP"
# Header bytes read for the sizes and flags below (BMP's compression field ends at byte 34).
HEADER_BYTES = 34
# GIF block introducers and labels.
GIF_EXTENSION, GIF_IMAGE, GIF_CONTROL = 0x21, 0x2C, 0xF9
# BMP: the smallest info header with 32-bit sizes (BITMAPINFOHEADER), and the pixel layouts read.
BMP_INFO_HEADER = 40
BMP_BITS = (24, 32)
BMP_UNCOMPRESSED = 0
# WebP's first chunk: lossy, lossless and extended (each states the size its own way).
WEBP_LOSSY, WEBP_LOSSLESS, WEBP_EXTENDED = b"VP8 ", b"VP8L", b"VP8X"
_JPEG, _PNG, _GIF, _BMP, _WEBP, _OTHER = range(6)
# Most PNG chunks before the image data, or GIF blocks before the first image, walked (a graph loop
# step each, tens of microseconds): real files hold tens; a file crafted with millions is refused
# after a fraction of a second instead of holding a serving thread for minutes.
WALK_LIMIT = 1 << 12


def _check(condition, template, *values):
    """An assert op whose failure says ``template`` (``{}`` placeholders filled from ``values``)."""
    message = tf.strings.format(template, list(values)) if values else tf.constant(template)
    return tf.debugging.Assert(condition, [message])


def _padded(data, size):
    """The first ``size`` bytes of ``data``, zeros past the end of a short file."""
    return tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, size), b"\0" * size]), 0, size)


def _header(data):
    """The first :data:`HEADER_BYTES` bytes as int64 values, zeros past the end of a short file."""
    return tf.cast(tf.io.decode_raw(_padded(data, HEADER_BYTES), tf.uint8), tf.int64)


def _number(values, start, size, big_endian=False):
    """The unsigned integer of ``size`` bytes of ``values`` at ``start``."""
    positions = range(start, start + size) if big_endian else range(start + size - 1, start - 1, -1)
    number = tf.constant(0, tf.int64)
    for position in positions:
        number = number * 256 + values[position]
    return number


def _signed32(number):
    return tf.where(number >= 2**31, number - 2**32, number)


def _format_index(data):
    prefix = tf.strings.substr(data, 0, len(PNG_SIGNATURE))
    is_png = tf.equal(prefix, PNG_SIGNATURE)
    gif = tf.strings.substr(data, 0, len(GIF_SIGNATURES[0]))
    is_gif = tf.reduce_any(tf.equal(gif, GIF_SIGNATURES))
    is_bmp = tf.equal(tf.strings.substr(data, 0, len(BMP_SIGNATURE)), BMP_SIGNATURE)
    is_webp = tf.logical_and(
        tf.equal(tf.strings.substr(data, 0, 4), b"RIFF"),
        tf.equal(tf.strings.substr(_padded(data, 12), 8, 4), WEBP_SIGNATURE),
    )
    index = tf.where(is_webp, _WEBP, _OTHER)
    index = tf.where(is_bmp, _BMP, index)
    index = tf.where(is_gif, _GIF, index)
    index = tf.where(is_png, _PNG, index)
    return tf.where(tf.io.is_jpeg(data), _JPEG, index)


def _capped(width, height, max_pixels):
    """The pixel cap's assert op (a header's sizes, before decoding)."""
    return _check(width * height <= max_pixels, images.TOO_MANY_PIXELS, width, height, max_pixels)


def _on_white(rgba):
    """uint8-valued int32 ``[H, W, 4]`` -> uint8 RGB composited on white."""
    return tf.cast(images.over_white(rgba[..., :3], rgba[..., 3:]), tf.uint8)


def _jpeg(data, max_pixels):
    shape = tf.image.extract_jpeg_shape(data, output_type=tf.int64)
    with tf.control_dependencies([_capped(shape[1], shape[0], max_pixels)]):
        return schema.decode_jpeg(data)


def _png(data, max_pixels):
    head = _header(data)
    # IHDR is the first chunk: width and height are its first two big-endian 32-bit fields.
    width, height = _number(head, 16, 4, big_endian=True), _number(head, 20, 4, big_endian=True)
    with tf.control_dependencies([_capped(width, height, max_pixels)]):
        # 16 bits for every depth (libpng scales 8-bit samples by 257), then PIL's high byte.
        wide = tf.io.decode_png(data, channels=4, dtype=tf.uint16)
    rgba = tf.bitwise.right_shift(tf.cast(wide, tf.int32), 8)
    # TensorFlow's filler alpha of an image without any is wrong below 8 bits (1 for 1-bit
    # gray, 15 for a 4-bit palette): only an alpha channel or a tRNS chunk is alpha.
    values = tf.concat([tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64), [0]], axis=0)
    transparency, steps = _png_has_trns(values)
    alpha = tf.logical_or(tf.reduce_any(tf.equal(head[25], PNG_ALPHA_TYPES)), transparency)
    limit = _check(steps < WALK_LIMIT, "PNG: more than {} chunks before the image data", WALK_LIMIT)
    with tf.control_dependencies([limit]):
        return _on_white(tf.concat([rgba[..., :3], tf.where(alpha, rgba[..., 3:], 255)], axis=-1))


def _png_has_trns(values):
    """``(found, steps)``: whether a tRNS chunk comes before the image data, walking the chunks
    after the signature, and the chunks walked."""

    def kind(position):
        return _big32(values, position + 4)

    def more(position, steps):
        last = tf.reduce_any(tf.equal(kind(position), PNG_LAST))
        return tf.logical_and(tf.logical_and(position < end, steps < WALK_LIMIT), tf.logical_not(last))

    def step(position, steps):
        return [position + _big32(values, position) + 12, steps + 1]  # length, type, data, CRC

    end = tf.size(values, out_type=tf.int64) - 1
    position, steps = tf.while_loop(more, step, [_int(len(PNG_SIGNATURE)), _int(0)])
    return tf.equal(kind(position), PNG_TRNS), steps


def _byte(values, position):
    """The byte at ``position`` of a ``[n + 1]`` byte vector whose last entry is a 0 past the end."""
    position = tf.convert_to_tensor(position, tf.int64)
    return tf.gather(values, tf.clip_by_value(position, 0, tf.size(values, out_type=tf.int64) - 1))


def _big32(values, position):
    """The big-endian 32-bit number at ``position`` (PNG's chunk lengths and types)."""
    return sum(_byte(values, position + i) * 256 ** (3 - i) for i in range(4))


def _int(value):
    return tf.constant(value, tf.int64)


def _entries(flags):
    """Entries of the colour table whose size bits (the low three) ``flags`` holds: 2 ** (bits + 1)."""
    return tf.bitwise.left_shift(_int(2), flags % 8)


def _first_frame(values):
    """``(control, descriptor, steps)``: the positions of the first image's control extension (-1:
    none) and of its image descriptor, walking the extensions after the global colour table (each
    a label, then data sub-blocks: a length byte and its bytes, until a 0 length), and the steps."""
    flags = _byte(values, 10)
    table = tf.where(flags >= 128, 3 * _entries(flags), _int(0))
    end = tf.size(values, out_type=tf.int64) - 1

    def more(position, control, inside, steps):
        del control
        going = tf.logical_or(inside, tf.equal(_byte(values, position), GIF_EXTENSION))
        return tf.logical_and(tf.logical_and(position < end, steps < WALK_LIMIT), going)

    def step(position, control, inside, steps):
        # Outside: an extension starts (its label, then sub-blocks). Inside: one sub-block.
        is_control = tf.logical_and(
            tf.equal(_byte(values, position + 1), GIF_CONTROL), _byte(values, position + 2) >= 4
        )
        # Only the last control extension before the image applies to it.
        control = tf.where(tf.logical_or(inside, tf.logical_not(is_control)), control, position)
        length = _byte(values, position)
        position = tf.where(inside, position + length + 1, position + 2)
        inside = tf.logical_or(tf.logical_not(inside), length > 0)
        return [position, control, inside, steps + 1]

    position, control, _, steps = tf.while_loop(
        more, step, [13 + table, _int(-1), tf.constant(False), _int(0)]
    )
    return control, position, steps


def _replace(data, position, new, size):
    """``data`` with the ``size`` bytes at ``position`` replaced by the string ``new`` (as long)."""
    total = tf.cast(tf.strings.length(data), tf.int64)
    tail = tf.strings.substr(data, position + size, total - position - size)
    return tf.strings.join([tf.strings.substr(data, _int(0), position), new, tail])


def _white_transparency(data, values, control, descriptor):
    """``data`` whose first frame's transparent index is a white, opaque colour (PIL: on white)."""
    packed, index = _byte(values, control + 3), _byte(values, control + 6)
    local, flags = _byte(values, descriptor + 9), _byte(values, 10)
    # The frame's local colour table if it has one, else the global one (-1: neither).
    table = tf.where(local >= 128, descriptor + 10, tf.where(flags >= 128, _int(13), _int(-1)))
    size = _entries(tf.where(local >= 128, local, flags))
    present = tf.logical_and(table >= 0, index < size)
    transparent = tf.logical_and(control >= 0, tf.equal(packed % 2, 1))

    def whitened():
        single = tf.constant([bytes([value]) for value in range(256)])
        # The transparency flag is bit 0 of the packed byte, and it is set: clearing it subtracts 1.
        cleared = _replace(data, control + 3, tf.gather(single, packed - 1), 1)
        return tf.cond(
            present, lambda: _replace(cleared, table + 3 * index, b"\xff\xff\xff", 3), lambda: cleared
        )

    return tf.cond(transparent, whitened, lambda: data)


def _gif(data, max_pixels):
    head = _header(data)
    width, height = _number(head, 6, 2), _number(head, 8, 2)
    values = tf.concat([tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64), [0]], axis=0)
    control, descriptor, steps = _first_frame(values)
    frame = [_byte(values, descriptor + i) + 256 * _byte(values, descriptor + i + 1) for i in (1, 3, 5, 7)]
    covers = tf.reduce_all(tf.equal(tf.stack(frame), tf.stack([_int(0), _int(0), width, height])))
    checks = [
        _capped(width, height, max_pixels),
        _check(steps < WALK_LIMIT, "GIF: more than {} blocks before the first image", WALK_LIMIT),
        _check(tf.equal(_byte(values, descriptor), GIF_IMAGE), "GIF: no image after the header"),
        # TensorFlow returns such a frame at its own size, PIL on the canvas: other pictures.
        _check(
            covers,
            "GIF whose first frame ({}x{} at {},{}) does not cover its {}x{} canvas: the export reads "
            "GIF files whose first frame is whole",
            frame[2],
            frame[3],
            frame[0],
            frame[1],
            width,
            height,
        ),
    ]
    with tf.control_dependencies(checks):
        source = _white_transparency(data, values, control, descriptor)
        return tf.io.decode_image(source, channels=3, expand_animations=False)


def _bmp(data, max_pixels):
    head = _header(data)
    info = _number(head, 14, 4)
    # BITMAPINFOHEADER and later: signed 32-bit sizes (a negative height is a top-down file).
    width, height = _signed32(_number(head, 18, 4)), tf.abs(_signed32(_number(head, 22, 4)))
    # An older header's sizes lie elsewhere: its own refusal, not the cap's, says what is wrong.
    width, height = tf.where(info >= BMP_INFO_HEADER, width, 0), tf.where(info >= BMP_INFO_HEADER, height, 0)
    bits, compression = _number(head, 28, 2), _number(head, 30, 4)
    checks = [
        _check(info >= BMP_INFO_HEADER, "BMP: an OS/2 header (the export reads Windows BMP files)"),
        _capped(width, height, max_pixels),
        _check(
            tf.logical_and(tf.reduce_any(tf.equal(bits, BMP_BITS)), tf.equal(compression, BMP_UNCOMPRESSED)),
            "BMP of {} bits per pixel, compression {}: the export reads uncompressed 24 and 32-bit BMP files",
            bits,
            compression,
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.io.decode_bmp(data, channels=0)[..., :3]


def _webp(data, max_pixels):
    head = _header(data)
    chunk = tf.strings.substr(_padded(data, 16), 12, 4)
    # Lossy: 14-bit sizes in the key frame's header; lossless: 14-bit sizes minus one, packed
    # after the signature byte; extended: the canvas's 24-bit sizes minus one.
    packed = _number(head, 21, 4)
    width = tf.where(
        tf.equal(chunk, WEBP_LOSSY),
        _number(head, 26, 2) % 16384,
        tf.where(tf.equal(chunk, WEBP_LOSSLESS), packed % 16384 + 1, _number(head, 24, 3) + 1),
    )
    height = tf.where(
        tf.equal(chunk, WEBP_LOSSY),
        _number(head, 28, 2) % 16384,
        tf.where(tf.equal(chunk, WEBP_LOSSLESS), packed // 16384 % 16384 + 1, _number(head, 27, 3) + 1),
    )
    known = tf.reduce_any(tf.equal(chunk, [WEBP_LOSSY, WEBP_LOSSLESS, WEBP_EXTENDED]))
    checks = [_check(known, "WebP: unknown first chunk"), _capped(width, height, max_pixels)]
    with tf.control_dependencies(checks):
        # libwebp decodes to the file's own channels: 4 when it has alpha.
        image = tf.io.decode_image(data, channels=0, expand_animations=False)
    return tf.cond(
        tf.equal(tf.shape(image)[-1], 4),
        lambda: _on_white(tf.cast(image, tf.int32)),
        lambda: tf.ensure_shape(image[..., :3], [None, None, 3]),
    )


def _other(data, max_pixels):
    del data, max_pixels
    with tf.control_dependencies([_check(False, f"not an image the export reads ({FORMATS})")]):
        return tf.identity(tf.zeros([0, 0, 3], tf.uint8))


def decode_image(data, max_pixels=images.MAX_PIXELS):
    """Decodes one encoded image to the uint8 RGB pixels PIL and :func:`contracts.images.to_rgb` give.

    Works eagerly and inside a ``tf.function`` (the export's signatures).

    Args:
        data: A scalar ``tf.string``: the file's bytes.
        max_pixels: Most pixels the header may announce.

    Returns:
        A uint8 ``[H, W, 3]`` tensor.

    Raises:
        tf.errors.InvalidArgumentError: For bytes of another format, a header announcing more
            than ``max_pixels`` pixels, a refused variant (a BMP other than uncompressed
            24/32-bit) or a malformed file (:func:`error_message` says which).
    """
    data = tf.convert_to_tensor(data, tf.string)
    branches = [
        lambda decoder=decoder: decoder(data, max_pixels)
        for decoder in (_jpeg, _png, _gif, _bmp, _webp, _other)
    ]
    image = tf.switch_case(tf.cast(_format_index(data), tf.int32), branches)
    return tf.ensure_shape(image, [None, None, 3])


# What TensorFlow wraps around an op's own message: the graph-execution preamble, stack lines,
# the node tags and the Assert op's prefix (tf.debugging.Assert prints its data as "[...]").
_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces|File |\s*\[\[)")
_TAGS = re.compile(r"\{\{[^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]")
_ASSERT = re.compile(r"^(?:assertion failed: )?\[(.*)\]$")
# The eager form of a failed assert (a decode called outside any tf.function).
_EAGER_ASSERT = re.compile(r"^Expected .* to be true\. Summarized data: b?(['\"])(.*)\1$")


def error_message(error):
    """The one line of a TensorFlow error that says what failed (the op's or the assert's own words).

    Args:
        error: A ``tf.errors.OpError`` (or any exception).

    Returns:
        That line, without TensorFlow's preamble, node names and stack lines.
    """
    text = str(getattr(error, "message", None) or error)
    for line in text.splitlines():
        if _NOISE.match(line.strip()):
            continue
        line = _TAGS.sub("", line).strip()
        match = _ASSERT.match(line)
        if match:
            line = match.group(1).strip()
        match = _EAGER_ASSERT.match(line)
        if match:
            line = match.group(2).strip()
        if line:
            return line
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
