"""The export's refusals and edges: the pixel cap, errors in one line, empty batches, whole folders.

A SavedModel export of an untrained tiny CNN (the trainer's writer,
:func:`trainer.export.export_saved_model`) is called as ``trainer.predict``
calls it (:class:`trainer.export.LoadedExport`):

* a header announcing more than :data:`contracts.images.MAX_PIXELS` pixels is
  refused by every signature, before decoding, in the words PIL's path uses
  (a 420 kB PNG of 12000x12000 once cost 2.1 GB per request);
* a file crafted with thousands of blocks before its image is refused at once
  (the header walks are graph loops);
* an undecodable file's error is the decoder's own line, not TensorFlow's
  "Graph execution error:" preamble;
* an empty batch gets empty outputs of the documented shapes and types
  (it once failed inside batch normalisation);
* the folder is written whole or not at all: a failed write (a full disk,
  here a file-size limit on this process) is one line, leaves no temporary
  folder and keeps the previous export; a killed export's leftovers are
  removed by the next one.
"""

import io
import json
import os
import shutil
import time
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import decode, images
from preprocessing import sample_photos
from tests import disk
from tests.explain import tiny_cnn
from trainer import export, export_io, predict

IMAGE_SIZE, CROP = 32, 28
CLASSES = ("a", "b", "c")
# Sides whose product exceeds the cap (4096 x 4096) while the files stay small: one colour compresses.
LARGE = (5000, 4000)


def _write_export(folder, classes=CLASSES):
    keras.utils.set_random_seed(2)
    return export.export_saved_model(
        tiny_cnn(CROP, len(classes)),
        str(folder),
        layer="features",
        wnids=list(classes),
        class_names=[f"class {c}" for c in classes],
        image_size=IMAGE_SIZE,
        policy="crop",
        crop_size=CROP,
    )


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """The tiny CNN's export, loaded."""
    return export.LoadedExport(_write_export(tmp_path_factory.mktemp("hardening") / "export"))


def _encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo_bytes(fmt="PNG"):
    image, _ = sample_photos.render_photo(1, np.random.default_rng(1), (40, 30))
    return _encode(image, fmt)


def _bmp_announcing(width, height):
    # A real 24-bit BMP whose header's sizes are raised (a 5000x4000 BMP is 60 MB on disk).
    data = bytearray(_photo_bytes("BMP"))
    data[18:22], data[22:26] = width.to_bytes(4, "little"), height.to_bytes(4, "little")
    return bytes(data)


# format -> bytes of a file whose header announces LARGE pixels.
TOO_LARGE = {
    "png": lambda: _encode(Image.new("L", LARGE), "PNG"),
    "jpeg": lambda: _encode(Image.new("L", LARGE), "JPEG", quality=50),
    "gif": lambda: _encode(Image.new("P", LARGE), "GIF"),
    "bmp": lambda: _bmp_announcing(*LARGE),
}


@pytest.mark.parametrize("fmt", sorted(TOO_LARGE))
def test_a_header_over_the_pixel_cap_is_refused_by_every_signature(fmt, loaded):
    data = TOO_LARGE[fmt]()
    assert len(data) < 1 << 20  # Small on disk: the bomb is in the header's sizes.
    expected = images.TOO_MANY_PIXELS.format(*LARGE, images.MAX_PIXELS)
    with pytest.raises(images.ImageTooLargeError, match="exceeds the limit"):
        images.open_image(data)  # What predict and the Beam job say.
    for signature in (export.SIGNATURE, export.EXPLAIN_SIGNATURE, export.PREPROCESS_SIGNATURE):
        with pytest.raises(export.ImageDecodeError) as raised:
            loaded(signature, [_photo_bytes(), data])
        assert str(raised.value) == expected, signature


def test_an_image_at_the_pixel_cap_is_decoded(loaded):
    # The cap is inclusive, as PIL's check is: 4096 x 4096 exactly passes (one colour, so a small file).
    side = int(images.MAX_PIXELS**0.5)
    data = _encode(Image.new("RGB", (side, side), (10, 20, 30)), "PNG")
    pixels = loaded(export.PREPROCESS_SIGNATURE, [data])["pixels"]
    assert pixels.shape == (1, CROP, CROP, 3) and np.all(pixels == [10, 20, 30])


def _many_blocks(fmt, count):
    """A real GIF or PNG with ``count`` empty comment blocks (GIF sub-blocks, PNG tEXt chunks)
    inserted before its image: each costs the export's header walk a step."""
    data = _photo_bytes(fmt)
    if fmt == "GIF":
        start = 13 + 3 * 2 ** ((data[10] & 7) + 1)  # After the global colour table.
        return data[:start] + b"\x21\xfe" + b"\x01x" * count + b"\x00" + data[start:]
    text = b"tEXt" + b"k\x00v"
    chunk = len(b"k\x00v").to_bytes(4, "big") + text + zlib.crc32(text).to_bytes(4, "big")
    return data[:33] + chunk * count + data[33:]  # After the signature and IHDR.


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_a_file_with_too_many_blocks_before_its_image_is_refused_in_a_moment(fmt, loaded):
    # The walk for GIF transparency / PNG tRNS is a graph loop: millions of crafted blocks would hold
    # a serving thread for minutes; past decode.WALK_LIMIT the file is refused.
    usual = _many_blocks(fmt, 100)
    assert loaded(export.PREPROCESS_SIGNATURE, [usual])["pixels"].shape == (1, CROP, CROP, 3)
    np.testing.assert_array_equal(decode.decode_image(usual), predict.decode_image(usual))
    started = time.monotonic()
    with pytest.raises(export.ImageDecodeError, match=f"more than {decode.WALK_LIMIT}"):
        loaded(export.SIGNATURE, [_many_blocks(fmt, decode.WALK_LIMIT + 1)])
    assert time.monotonic() - started < 30


# name -> (bytes, words of the decoder's own message).
UNDECODABLE = {
    "truncated_png": (lambda: _photo_bytes("PNG")[:120], "PNG"),
    "garbage": (lambda: b"this is not an image at all", "not an image the export reads"),
    "empty_file": (lambda: b"", "not an image the export reads"),
    "gif_without_image": (lambda: _photo_bytes("GIF")[:800] + b"\x3b", "GIF"),
    "jpeg_header_only": (lambda: _photo_bytes("JPEG")[:2] + b"\xff\xd9", "JPEG"),
}


@pytest.mark.parametrize("name", sorted(UNDECODABLE))
def test_an_undecodable_image_through_the_export_says_what_failed_in_one_line(name, loaded):
    build, words = UNDECODABLE[name]
    with pytest.raises(export.ImageDecodeError) as raised:
        loaded(export.SIGNATURE, [build()])
    message = str(raised.value)
    assert "\n" not in message and words.lower() in message.lower(), message
    assert "Graph execution error" not in message and "{{" not in message and "node" not in message


def test_predict_through_an_export_reports_the_decoders_words(loaded, tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(_photo_bytes("PNG"))
    bad.write_bytes(_photo_bytes("PNG")[:120])
    code = predict.main(["--model", loaded.path, "--json", str(good), str(bad)])
    captured = capsys.readouterr()
    assert code == 1
    document = json.loads(captured.out)
    assert [row["image"] for row in document["predictions"]] == [str(good)]
    [error] = document["errors"]
    assert error["image"] == str(bad) and "Invalid PNG data" in error["error"], error
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: {bad}: {error['error']}"], captured.err


def test_an_empty_batch_gets_empty_outputs_of_every_signature(loaded):
    top = len(CLASSES)
    expected = {
        export.SIGNATURE: {
            "classes": ((0, top), np.int32),
            "wnids": ((0, top), object),
            "names": ((0, top), object),
            "probabilities": ((0, top), np.float32),
        },
        export.PREPROCESS_SIGNATURE: {"pixels": ((0, CROP, CROP, 3), np.float32)},
    }
    expected[export.EXPLAIN_SIGNATURE] = {
        **expected[export.SIGNATURE],
        "heatmap": ((0, CROP, CROP), np.float32),
        "peak": ((0, 2), np.int32),
    }
    for signature, outputs in expected.items():
        got = loaded(signature, [])
        assert {key: (value.shape, value.dtype) for key, value in got.items()} == outputs, signature
    # And a batch of one after the empty one still answers (the same traced function).
    served = loaded(export.SIGNATURE, [_photo_bytes()])
    assert served["classes"].shape == (1, top) and served["probabilities"].sum() == pytest.approx(1.0)


def _siblings(folder):
    """Everything beside ``folder`` in its parent other than ``folder`` itself."""
    return sorted(name for name in os.listdir(os.path.dirname(folder)) if name != os.path.basename(folder))


def _tree(folder):
    """``relative path -> bytes`` of every file below ``folder``."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def test_a_full_disk_is_one_error_line_and_keeps_the_previous_export(loaded, tmp_path):
    folder = str(tmp_path / "job" / "export")
    shutil.copytree(loaded.path, folder)  # A previous export.
    before = _tree(folder)
    with disk.file_size_limit(4096), pytest.raises(export_io.ExportError) as raised:
        _write_export(folder, classes=("x", "y"))
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"cannot write the export to {folder}: "), message
    assert "large" in message.lower() or "space" in message.lower(), message
    assert _tree(folder) == before, "the previous export changed"
    assert _siblings(folder) == [], "temporary files were left behind"


def test_an_export_failing_half_way_leaves_no_folder_behind(tmp_path, monkeypatch):
    folder = str(tmp_path / "export")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # After the SavedModel is written, before its settings file.

    monkeypatch.setattr(export, "_write_settings", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write_export(folder)
    assert not os.path.exists(folder) and os.listdir(tmp_path) == []
    assert not export.is_export(folder)


def test_a_killed_exports_leftovers_are_no_export_and_the_next_export_removes_them(tmp_path):
    # A SIGKILL runs no clean-up: the partial folder stays, beside (never at) the export's name.
    folder = str(tmp_path / "export")
    os.makedirs(folder)  # The trainer's output folders exist, empty, from the start of the run.
    leftover = tmp_path / ".export.partial-99999"
    (leftover / "variables").mkdir(parents=True)
    (leftover / export.SAVED_MODEL_FILE).write_bytes(b"half")
    assert not export.is_export(folder)
    _write_export(folder)
    assert export.is_export(folder) and _siblings(folder) == []


def test_a_new_export_replaces_the_previous_one_whole(loaded, tmp_path):
    folder = str(tmp_path / "export")
    shutil.copytree(loaded.path, folder)  # A previous export.
    _write_export(folder, classes=("x", "y"))
    assert _siblings(folder) == []
    served = export.LoadedExport(folder)(export.SIGNATURE, [_photo_bytes()])
    assert sorted(export.decode_names(served["wnids"])) == ["x", "y"]
    with open(os.path.join(folder, export.SETTINGS_FILE)) as f:
        assert json.load(f)["resize"] == {"policy": "crop", "size": IMAGE_SIZE}
    assert tf.saved_model.contains_saved_model(folder)
