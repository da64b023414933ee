"""One decode for every path: the Beam job's, predict's and the export's pixels agree to the bit.

Each file is a sample photo (:func:`preprocessing.sample_photos.render_photo`)
saved in one of the formats and colour modes a user may hand over: alpha of
every level (RGBA, gray + alpha, a palette's transparent entries, a colour's
tRNS), 16-bit samples, grayscale, 1- and 4-bit PNGs, GIF (with a transparent
index), BMP, CMYK JPEG, WebP. Its pixels are decoded three ways:

* the Beam job's conversion (:func:`contracts.images.open_image` then
  :func:`contracts.images.to_rgb`, as ``preprocessing.images`` calls them);
* ``trainer.predict``'s (:func:`trainer.predict.decode_image`);
* the export's: :func:`contracts.decode.decode_image` in TensorFlow, and the
  ``preprocess`` signature of a real SavedModel export (which then resizes and
  crops: compared with :func:`contracts.resize.resize` of the PIL pixels).

All must be equal, exactly: no tolerance is needed, because every decoder in
play keeps the same integers (libjpeg's accurate DCT on both sides, PIL's and
TensorFlow's 16-bit samples both cut to their high byte, one integer formula for
alpha). Files that TensorFlow cannot decode as PIL does are refused by the
export with a message naming why (palette BMP, TIFF, a GIF whose first frame
does not fill its canvas), never served as
other pixels. Each transparent file is checked to be discriminating: dropping
its alpha (the export's former ``decode_image(channels=3)``) gives other pixels.
"""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import decode, images, resize
from preprocessing import sample_photos
from tests.explain import tiny_cnn
from trainer import export, predict

IMAGE_SIZE, CROP = 32, 28
# (width, height): not square, so the export's resize has work to do.
PHOTO_SIZE = (45, 30)


def _photo(seed=7):
    """A sample photo (RGB PIL image)."""
    image, _ = sample_photos.render_photo(seed % 5, np.random.default_rng(seed), PHOTO_SIZE)
    return image


def _ramp():
    """Alpha of every level 0..255 (a ramp across the photo, shifted by the row)."""
    width, height = PHOTO_SIZE
    columns = np.arange(width) * 255 // (width - 1)
    return ((columns[np.newaxis, :] + 7 * np.arange(height)[:, np.newaxis]) % 256).astype(np.uint8)


def _encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rgba():
    rgba = _photo().convert("RGBA")
    rgba.putalpha(Image.fromarray(_ramp(), "L"))
    return rgba


def _rgba_16bit():
    # PIL writes no 16-bit colour PNG; TensorFlow's encoder does. Low bytes are noise PIL drops.
    rgba = np.asarray(_rgba()).astype(np.uint16) * 256
    rgba += np.random.default_rng(3).integers(0, 256, rgba.shape, dtype=np.uint16)
    return tf.io.encode_png(rgba).numpy()


def _transparent():
    # What the audit found: fully transparent, black under the alpha (mean 126 when alpha is dropped).
    rgba = np.asarray(_photo().convert("RGBA")).copy()
    rgba[..., 3] = 0
    rgba[: PHOTO_SIZE[1] // 2, ..., :3] = 0
    return _encode(Image.fromarray(rgba, "RGBA"), "PNG")


def _palette():
    return _photo().quantize(colors=64)


def _palette_alpha():
    # One alpha per palette entry (a PNG tRNS chunk of 64 levels).
    alphas = bytes((index * 37) % 256 for index in range(64))
    return _encode(_palette(), "PNG", transparency=alphas)


def _gray_16bit(transparent=None):
    gray = np.asarray(_photo().convert("L")).astype(np.uint16) * 257
    gray[::3] += 100  # Low bytes that differ from the high ones.
    options = {} if transparent is None else {"transparency": int(gray[2, 5])}
    return _encode(Image.fromarray(gray), "PNG", **options)


def _rgb_colour_key():
    rgb = _photo()
    key = rgb.getpixel((3, 4))
    return _encode(rgb, "PNG", transparency=key)


def _gif(transparent):
    palette = _palette()
    options = {"transparency": int(np.asarray(palette)[4, 3])} if transparent else {}
    return _encode(palette, "GIF", **options)


def _gif_on_a_larger_canvas():
    # The logical screen 10 pixels wider than the frame: PIL shows the frame on the canvas,
    # TensorFlow returns the frame alone.
    data = bytearray(_gif(transparent=False))
    data[6:8] = (PHOTO_SIZE[0] + 10).to_bytes(2, "little")
    return bytes(data)


# name -> bytes of the file; all are decoded alike by the three paths.
FILES = {
    "rgba_png": lambda: _encode(_rgba(), "PNG"),
    "rgba_16bit_png": _rgba_16bit,
    "fully_transparent_png": _transparent,
    "gray_alpha_png": lambda: _encode(_rgba().convert("LA"), "PNG"),
    "palette_alpha_png": _palette_alpha,
    "palette_index_transparent_png": lambda: _encode(_palette(), "PNG", transparency=5),
    "palette_png": lambda: _encode(_palette(), "PNG"),
    "palette_4bit_png": lambda: _encode(_photo().quantize(colors=16), "PNG", bits=4),
    "rgb_colour_key_png": _rgb_colour_key,
    "gray_png": lambda: _encode(_photo().convert("L"), "PNG"),
    "gray_16bit_png": _gray_16bit,
    "gray_16bit_transparent_png": lambda: _gray_16bit(transparent=True),
    "bilevel_png": lambda: _encode(_photo().convert("1"), "PNG"),
    "rgb_jpeg": lambda: _encode(_photo(), "JPEG", quality=90),
    "gray_jpeg": lambda: _encode(_photo().convert("L"), "JPEG", quality=90),
    "progressive_jpeg": lambda: _encode(_photo(), "JPEG", quality=75, progressive=True),
    "cmyk_jpeg": lambda: _encode(_photo().convert("CMYK"), "JPEG", quality=90),
    "gif": lambda: _gif(transparent=False),
    "transparent_gif": lambda: _gif(transparent=True),
    "gray_gif": lambda: _encode(_photo().convert("L"), "GIF"),
    "bmp_24bit": lambda: _encode(_photo(), "BMP"),
    "bmp_32bit": lambda: _encode(_rgba(), "BMP"),
    "webp": lambda: _encode(_photo(), "WEBP", quality=80),
    "lossless_alpha_webp": lambda: _encode(_rgba(), "WEBP", lossless=True),
    "alpha_webp": lambda: _encode(_rgba(), "WEBP", quality=80),
}
# Files with alpha or a transparent colour: their pixels must differ from the colours under the alpha.
TRANSPARENT = {name for name in FILES if "alpha" in name or "transparent" in name or "rgba" in name}
TRANSPARENT |= {"rgb_colour_key_png", "transparent_gif"}
# name -> (bytes, what the export's refusal says): TensorFlow would give other pixels than PIL.
REFUSED = {
    "palette_bmp": (lambda: _encode(_palette(), "BMP"), "BMP of 8 bits per pixel"),
    "tiff": (lambda: _encode(_photo(), "TIFF"), "not an image the export reads"),
    "gif_frame_smaller_than_its_canvas": (_gif_on_a_larger_canvas, "does not cover its 55x30 canvas"),
}


def _beam_pixels(data):
    """The Beam job's conversion of a non-JPEG or resized input (preprocessing.images._reencode)."""
    with images.open_image(data) as image:
        image.load()
        return images.to_rgb(image)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A SavedModel export of an untrained tiny CNN, written by the trainer's writer."""
    import keras

    keras.utils.set_random_seed(2)
    folder = str(tmp_path_factory.mktemp("decode-parity") / "export")
    export.export_saved_model(
        tiny_cnn(CROP, 3),
        folder,
        layer="features",
        wnids=["a", "b", "c"],
        class_names=["a", "b", "c"],
        image_size=IMAGE_SIZE,
        policy="crop",
        crop_size=CROP,
        resize_policy="stretch",
    )
    return export.LoadedExport(folder)


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_beam_job_predict_and_the_export_decode_to_the_same_pixels(name, loaded):
    data = FILES[name]()
    beam = _beam_pixels(data)
    assert beam.dtype == np.uint8 and beam.shape == (PHOTO_SIZE[1], PHOTO_SIZE[0], 3)
    np.testing.assert_array_equal(predict.decode_image(data), beam)
    np.testing.assert_array_equal(decode.decode_image(data).numpy(), beam)
    offset = (IMAGE_SIZE - CROP) // 2
    expected = resize.resize(beam, IMAGE_SIZE, "stretch").numpy()[
        offset : offset + CROP, offset : offset + CROP
    ]
    pixels = loaded(export.PREPROCESS_SIGNATURE, [data])["pixels"]
    np.testing.assert_array_equal(pixels, expected[np.newaxis].astype(np.float32))


def _alpha_dropped(data):
    """The colours under the alpha: TensorFlow's decode without it (the export's former decode)."""
    image = tf.io.decode_image(data, channels=0, expand_animations=False)
    colours = image[..., :3] if image.shape[-1] >= 3 else tf.image.grayscale_to_rgb(image[..., :1])
    return colours.numpy() if colours.dtype == tf.uint8 else (colours.numpy() >> 8).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(TRANSPARENT))
def test_transparent_files_are_composited_on_white_not_stripped_of_alpha(name):
    data = FILES[name]()
    stripped = _alpha_dropped(data)
    composited = _beam_pixels(data)
    assert np.any(composited != stripped), "the file's transparency does not show: not a discriminating case"
    transparent = np.all(composited == 255, axis=-1) & np.any(stripped != 255, axis=-1)
    assert transparent.any(), "no pixel turned white where it was transparent"


def test_a_fully_transparent_png_is_white_in_every_path(loaded):
    # The audit's case: mean 255 in training, 126.3 through the export's former decode.
    data = _transparent()
    assert np.all(_beam_pixels(data) == 255)
    assert np.all(decode.decode_image(data).numpy() == 255)
    assert np.all(loaded(export.PREPROCESS_SIGNATURE, [data])["pixels"] == 255.0)
    served = loaded(export.SIGNATURE, [data])["probabilities"]
    white = loaded(export.SIGNATURE, [_encode(Image.new("RGB", PHOTO_SIZE, "white"), "PNG")])["probabilities"]
    np.testing.assert_array_equal(served, white)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_file_tensorflow_would_decode_otherwise_is_refused_by_the_export(name, loaded):
    build, reason = REFUSED[name]
    data = build()
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        decode.decode_image(data)
    assert reason in decode.error_message(raised.value)
    for signature in (export.PREPROCESS_SIGNATURE, export.SIGNATURE, export.EXPLAIN_SIGNATURE):
        with pytest.raises(export.ImageDecodeError, match=reason):
            loaded(signature, [data])


def test_pils_formats_the_export_refuses_are_the_ones_pil_reads_otherwise():
    # The refused files are ones PIL reads: the export refuses them for TensorFlow's sake only.
    for name, (build, _) in REFUSED.items():
        assert _beam_pixels(build()).shape[-1] == 3, name
