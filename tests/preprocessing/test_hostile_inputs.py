"""Hostile inputs: the job never crashes on a file and accounts for every one.

Each case of the review is generated in ``tmp_path`` (images with PIL and
numpy, the rest by :func:`preprocessing.sample.write_sample_dataset`) and run
through the real Beam job; the invariant ``written + rejected == found`` is
checked against an independent walk of the image folders.
"""

import contextlib
import dataclasses
import io
import json
import logging
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from contracts import images as rgb_images
from contracts import resize, schema
from preprocessing import fetch, images, plan, sample, task, transforms
from tests.preprocessing import shards
from trainer import predict

SHARDS = ["--num-shards-train", "2", "--num-shards-valid", "1", "--num-shards-test", "1"]
SHARDS += ["--num-shards-unlabeled", "1"]
MEAN_TOLERANCE = 2.0  # JPEG (quality 95) moves channel means of noise by well under a level.


def _noise(shape, seed, high=256, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def _encode(image, fmt):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _on_white(rgb, alpha):
    alpha = alpha[..., None].astype(np.float64) / 255
    return rgb * alpha + 255 * (1 - alpha)


def _palette_image(seed, transparent):
    image = Image.fromarray(_noise((64, 64, 3), seed)).quantize(32)
    palette = np.array(image.getpalette()[: 3 * 32], dtype=np.float64).reshape(-1, 3)
    index = np.asarray(image)
    expected = palette[index]
    if transparent:
        image.info["transparency"] = 0
        expected[index == 0] = 255
    return _encode(image, "PNG"), expected


def mode_cases():
    """``{name: (file bytes, expected RGB as float [64, 64, 3])}``, one per colour mode."""
    wide = _noise((64, 64), 1, 65536, np.uint16)
    gray16 = np.repeat((wide >> 8)[..., None], 3, axis=-1).astype(np.float64)
    rgb, gray, alpha = _noise((64, 64, 3), 2), _noise((64, 64), 3), _noise((64, 64), 4)
    cmyk = _noise((64, 64, 4), 5)
    # PIL's (and TensorFlow's) CMYK -> RGB: (255 - C) * (255 - K) / 255.
    from_cmyk = (255 - cmyk[..., :3].astype(np.float64)) * (255 - cmyk[..., 3:4]) / 255
    return {
        "i16": (_encode(Image.fromarray(wide), "PNG"), gray16),
        "i16b": (_encode(Image.fromarray(wide.astype(">u2")), "TIFF"), gray16),
        "i32": (_encode(Image.fromarray(wide.astype(np.int32)), "TIFF"), gray16),
        "palette": _palette_image(6, transparent=False),
        "palette_transparent": _palette_image(7, transparent=True),
        "la": (
            _encode(Image.fromarray(np.stack([gray, alpha], -1), "LA"), "PNG"),
            _on_white(np.repeat(gray[..., None], 3, -1), alpha),
        ),
        "rgba": (_encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"), _on_white(rgb, alpha)),
        "cmyk_jpeg": (_encode(Image.fromarray(cmyk, "CMYK"), "JPEG"), from_cmyk),
        "cmyk_tiff": (_encode(Image.fromarray(cmyk, "CMYK"), "TIFF"), from_cmyk),
    }


def _assert_means(pixels, expected, what):
    got = np.asarray(pixels, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    want = expected.reshape(-1, 3).mean(axis=0)
    # The saturation bug put 16-bit means near 255; composited alpha on black gives dark means.
    assert np.abs(got - want).max() < MEAN_TOLERANCE, f"{what}: channel means {got} != {want}"


@pytest.mark.parametrize("name", list(mode_cases()))
def test_modes_convert_like_the_source_in_the_job_and_in_predict(name):
    data, expected = mode_cases()[name]
    result = images.validate_image(data, 64)
    _assert_means(tf.io.decode_jpeg(result.data, channels=3).numpy(), expected, f"stored {name}")
    _assert_means(predict.decode_image(data), expected, f"predict {name}")
    assert (result.reencoded_from is None) == (name == "cmyk_jpeg"), "a good JPEG is kept as it is"


def _png(width, height):
    """A PNG whose header announces ``width x height`` but holds one row: tiny on disk."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" + bytes(3 * width))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _jpeg_bomb(side=20000):
    """A real JPEG whose frame header claims ``side x side``, without its end marker."""
    data = bytearray(_encode(Image.fromarray(_noise((64, 64, 3), 8)), "JPEG"))
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_jpeg_bomb(), "20000x20000 pixels exceeds the limit of 16777216 pixels"),
        (_png(20000, 20000), "exceeds the limit of 16777216 pixels"),
        (_png(5000, 5000), "5000x5000 pixels exceeds the limit"),
        (_encode(Image.fromarray(np.zeros((64, 64), np.float32)), "TIFF"), "colour mode F does not convert"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n", "not an image"),
    ],
)
def test_bombs_and_unsupported_files_are_refused_before_decoding(data, reason):
    with pytest.raises(images.BadImageError, match=reason):
        images.validate_image(data, 64)
    with pytest.raises((ValueError, OSError)):
        predict.decode_image(data)


def test_an_elongated_strip_costs_only_its_own_pixels_under_every_policy():
    # Within the pixel cap; scaling the shorter side to 64 before cutting would make it 1048576x64
    # (256 MB as float32). crop cuts its centre square first, so it becomes one pixel scaled up.
    strip = _encode(Image.new("RGB", (16384, 1), (10, 200, 30)), "PNG")
    for policy in ("crop", "pad", "stretch"):
        result = images.validate_image(strip, 64, policy)
        assert (result.height, result.width, result.source_width, result.source_height) == (64, 64, 16384, 1)
    pixels = np.asarray(Image.open(io.BytesIO(images.validate_image(strip, 64, "crop").data)))
    assert np.abs(pixels.astype(int) - (10, 200, 30)).max() <= 8  # the strip's colour, up to JPEG


SEEDS = {name: data for name, (data, _) in mode_cases().items()}
SEEDS["jpeg"] = _encode(Image.fromarray(_noise((64, 64, 3), 9)), "JPEG")
SEEDS["jpeg_wide"] = _encode(Image.fromarray(_noise((24, 80, 3), 11)), "JPEG")
SEEDS["png_tall"] = _encode(Image.fromarray(_noise((90, 20, 4), 12), "RGBA"), "PNG")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 5000),
    policy=st.sampled_from(resize.POLICIES),
)
def test_mutated_images_raise_nothing_but_bad_image_error(seed, edits, cut, policy):
    # An edited header announces another size: that image is decoded and resized, by each policy.
    data = bytearray(SEEDS[seed])
    for position, value in edits:
        data[position % len(data)] = value
    with contextlib.suppress(images.BadImageError):  # Any other exception fails the test.
        images.validate_image(bytes(data[: len(data) - cut % len(data)]), 64, policy)


def test_listing_survives_deep_nesting_and_counts_each_entry_once(tmp_path):
    root = tmp_path / "raw"
    deep = root / "test" / "images"
    deep.mkdir(parents=True)
    (deep / "a.JPEG").write_bytes(b"x")
    top = deep
    for _ in range(1200):  # Deeper than Python's recursion limit.
        deep = deep / "d"
        deep.mkdir()
    (deep / "bottom.JPEG").write_bytes(b"x")
    try:
        listed = fetch.list_image_folder(str(root), "test/images")
        assert [entry.problem for entry in listed] == [None, fetch.NESTED]
        assert listed[1].name.endswith("/d/bottom.JPEG")
    finally:
        # Bottom-up by hand: shutil.rmtree (pytest's clean-up) recurses and would fail here.
        (deep / "bottom.JPEG").unlink()
        while deep != top:
            deep.rmdir()
            deep = deep.parent


def _write_corpus(tmp_path):
    """The bad-input corpus; returns ``(raw root, info, {path: reason substring}, {name: expected})``."""
    raw = tmp_path / "raw"
    info = sample.write_sample_dataset(
        str(raw), sample.SampleSpec(classes=2, train_per_class=10, val_per_class=2, test_images=2, seed=3)
    )
    wnid = info["wnids"][0]
    folder = raw / "train" / wnid / "images"
    train = f"train/{wnid}/images"
    good = (folder / f"{wnid}_0.JPEG").read_bytes()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.JPEG").write_bytes(good)
    (outside / "images").mkdir()
    (outside / "images" / "o.JPEG").write_bytes(good)
    modes = mode_cases()
    for name, (data, _) in modes.items():
        (folder / f"{name}.JPEG").write_bytes(data)
    files = {
        "zero.JPEG": b"",
        "truncated.JPEG": good[: len(good) // 2],
        "text.JPEG": b"this is not a picture\n",
        "bomb.JPEG": _jpeg_bomb(),
        "bomb_png.JPEG": _png(20000, 20000),
        "float.JPEG": _encode(Image.fromarray(np.zeros((64, 64), np.float32)), "TIFF"),
        "conflict_box.JPEG": good,
        "strip.JPEG": _png(16384, 1),
        "photo.JPEG": _encode(Image.fromarray(_noise((240, 320, 3), 13)), "JPEG"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with open(folder.parent / f"{wnid}_boxes.txt", "a") as f:
        f.write("conflict_box.JPEG\t1\t1\t9\t9\nconflict_box.JPEG\t2\t2\t9\t9\n")
    with open(os.path.join(os.fsencode(folder), b"bad\xff.JPEG"), "wb") as f:
        f.write(good)
    os.symlink(outside / "secret.JPEG", folder / "link_out.JPEG")
    os.symlink(f"{wnid}_1.JPEG", folder / "link_in.JPEG")
    os.symlink("missing.JPEG", folder / "dangling.JPEG")
    os.symlink("sub", folder / "link_dir.JPEG")
    os.mkfifo(folder / "fifo.JPEG")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.JPEG").write_bytes(good)
    with open(folder / "huge.JPEG", "wb") as f:
        f.truncate(images.MAX_FILE_BYTES + 1)  # Sparse: no disk space used.
    (raw / "train" / "n99999999" / "images").mkdir(parents=True)
    (raw / "train" / "n99999999" / "images" / "stray.JPEG").write_bytes(good)
    os.symlink(outside, raw / "train" / "nlinked")
    val = raw / "val" / "images"
    (val / "conflict.JPEG").write_bytes(good)
    (val / "unlisted.JPEG").write_bytes(good)
    os.symlink(outside / "secret.JPEG", val / "link_out.JPEG")
    with open(raw / "val" / "val_annotations.txt", "a") as f:
        f.write(f"conflict.JPEG\t{wnid}\t0\t0\t9\t9\n")
        f.write(f"link_out.JPEG\t{wnid}\t0\t0\t9\t9\n")
        f.write(f"gone.JPEG\t{wnid}\t0\t0\t9\t9\n")
        f.write(f"conflict.JPEG\t{info['wnids'][1]}\t0\t0\t9\t9\n")
    (raw / "test" / "images" / "bomb.JPEG").write_bytes(_png(5000, 5000))
    expected = {
        f"{train}/zero.JPEG": "empty file",
        f"{train}/truncated.JPEG": "truncated or corrupt JPEG",
        f"{train}/text.JPEG": "not an image",
        f"{train}/bomb.JPEG": "20000x20000 pixels exceeds the limit",
        f"{train}/bomb_png.JPEG": "exceeds the limit of 16777216 pixels",
        f"{train}/float.JPEG": "colour mode F does not convert",
        f"{train}/conflict_box.JPEG": f"{wnid}_boxes.txt lines",
        f"{train}/bad\\xff.JPEG": "file name is not valid UTF-8",
        f"{train}/link_out.JPEG": "resolves outside the raw folder",
        f"{train}/dangling.JPEG": "symbolic link to something other than a regular file",
        f"{train}/link_dir.JPEG": "symbolic link to something other than a regular file",
        f"{train}/fifo.JPEG": "not a regular file",
        f"{train}/sub/deep.JPEG": "inside a sub-folder",
        f"{train}/huge.JPEG": f"file exceeds the limit of {images.MAX_FILE_BYTES} bytes",
        "train/n99999999/images/stray.JPEG": "train/n99999999 is not a class listed in wnids.txt",
        "train/nlinked/images": "folder resolves outside the raw folder through a symbolic link",
        "val/images/conflict.JPEG": "val_annotations.txt lines",
        "val/images/unlisted.JPEG": "image has no row in val_annotations.txt",
        "val/images/link_out.JPEG": "resolves outside the raw folder",
        "val/images/gone.JPEG": "listed in val_annotations.txt but the file is missing",
        "test/images/bomb.JPEG": "exceeds the limit of 16777216 pixels",
    }
    return raw, info, expected, {f"{name}.JPEG": want for name, (_, want) in modes.items()}


def _walk_count(raw):
    """Independent count of inputs: entries below the image folders, links not followed."""
    folders = [f"train/{d}/images" for d in os.listdir(raw / "train")] + ["val/images", "test/images"]
    count = 0
    for folder in folders:
        path = raw / folder
        if not os.path.realpath(path).startswith(os.path.realpath(raw) + os.sep):
            count += 1  # A folder that leads outside is one (rejected) input.
            continue
        for top, dirs, files in os.walk(path):
            count += len(files) + sum(os.path.islink(os.path.join(top, d)) for d in dirs)
    return count


def _records(out):
    metadata = json.loads((out / schema.METADATA_FILE).read_text())
    records = {}
    for entry in metadata["splits"].values():
        for shard in entry["shards"]:
            for raw in tf.data.TFRecordDataset(str(out / shard)).as_numpy_iterator():
                record = schema.decode_example(raw)
                records[(record["source_split"], record["filename"])] = record
    return metadata, records


def test_hostile_corpus_through_the_job(tmp_path, capsys, caplog):
    raw, info, expected, modes = _write_corpus(tmp_path)
    out = tmp_path / "out"
    args = ["--raw-dir", str(raw), "--output-dir", str(out), "--max-reject-fraction", "1", *SHARDS]
    with caplog.at_level(logging.INFO, logger="preprocessing"):
        code = task.run(args)
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    rejected = {}
    for line in (out / schema.REJECTED_FILE).read_text().splitlines():
        entry = json.loads(line)
        assert entry["path"] not in rejected, "each input is rejected once"
        rejected[entry["path"]] = entry["reason"]
    assert sorted(rejected) == sorted(expected)
    for path, reason in expected.items():
        assert reason in rejected[path], (path, rejected[path])
    metadata, records = _records(out)
    found = _walk_count(raw) + 1  # + gone.JPEG: a row of val_annotations.txt without its file.
    assert metadata["inputs"] == {"found": found, "written": len(records), "rejected": len(expected)}
    assert len(records) + len(rejected) == found
    assert f"accounted for {found} inputs" in caplog.text
    assert f"written {len(records)}, rejected {len(expected)}" in caplog.text
    index = {c["wnid"]: c["index"] for c in metadata["classes"]}
    wnid = info["wnids"][0]
    train = {name: r for (split, name), r in records.items() if split == "train"}
    assert sorted(train) == sorted([*info["train_boxes"], *modes, "link_in.JPEG", "photo.JPEG", "strip.JPEG"])
    assert all((r["height"], r["width"]) == (64, 64) for r in records.values()), "other sizes are resized"
    for name, record in train.items():
        assert record["label"] == index[name.split("_")[0] if name in info["train_boxes"] else wnid]
    for name, want in modes.items():
        _assert_means(tf.io.decode_jpeg(train[name]["image"], channels=3).numpy(), want, name)
    assert train["link_in.JPEG"]["image"] == train[f"{wnid}_1.JPEG"]["image"], "a link inside is followed"
    val = {name: r for (split, name), r in records.items() if split == "val"}
    assert sorted(val) == sorted(info["val"])
    assert all(r["label"] == index[info["val"][name][0]] for name, r in val.items())


def test_broken_accounting_is_an_internal_error(tmp_path, capsys, monkeypatch):
    sample.write_sample_dataset(str(tmp_path / "raw"), sample.SampleSpec(classes=2, train_per_class=4))
    real = plan.make_plan

    def miscounted(*args, **kwargs):
        job_plan = real(*args, **kwargs)
        return dataclasses.replace(job_plan, found=job_plan.found + 1)

    monkeypatch.setattr(plan, "make_plan", miscounted)
    code = task.run(["--raw-dir", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out"), *SHARDS])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: internal error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / schema.METADATA_FILE).exists()


def test_pixel_cap_is_shared_by_job_and_predict():
    assert images.MAX_PIXELS == rgb_images.MAX_PIXELS == 4096 * 4096


def test_any_exception_of_one_file_is_a_dead_letter(tmp_path, monkeypatch):
    folder = tmp_path / "raw" / "train" / "n1" / "images"
    folder.mkdir(parents=True)
    good = _encode(Image.fromarray(_noise((64, 64, 3), 10)), "JPEG")
    (folder / "a.JPEG").write_bytes(good)
    (folder / "boom.JPEG").write_bytes(good + b"\0")  # Padding after the end marker: still a good JPEG.
    real = images.validate_image

    def buggy(data, *args):
        if data.endswith(b"\0"):
            raise RuntimeError("decoder bug")  # Stands for any bug no test foresaw.
        return real(data, *args)

    monkeypatch.setattr(images, "validate_image", buggy)
    rejected, summary = shards.convert_shard(tmp_path, ("a.JPEG", "boom.JPEG"))
    assert rejected == [
        {"path": "train/n1/images/boom.JPEG", "reason": "unexpected error: RuntimeError: decoder bug"}
    ]
    assert summary == transforms.ShardSummary(
        "train", 0, "train-00000-of-00001.tfrecord", 1, [1], 0, 0, {"64x64": 1}
    )
