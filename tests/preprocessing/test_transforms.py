"""The Beam transforms on their own (TestPipeline + assert_that), and the resizing through the job."""

import io
import json
import logging

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from contracts import dataset, resize, schema
from contracts import images as rgb_images
from preprocessing import images, sample, sources, task, transforms
from tests import tiers


def _image_bytes(fmt="JPEG", mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _raw(tmp_path):
    folder = tmp_path / "raw" / "train" / "n1" / "images"
    folder.mkdir(parents=True)
    files = {
        "good.JPEG": _image_bytes(seed=1),
        "gray.JPEG": _image_bytes(mode="L", seed=2),
        "png.JPEG": _image_bytes(fmt="PNG", seed=3),
        "empty.JPEG": b"",
        "text.JPEG": b"just text",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return str(tmp_path / "raw"), files


def _item(name, box=None):
    if not name.endswith(".JPEG"):
        name += ".JPEG"
    return sources.Item(f"train/n1/images/{name}", "train", 0, box)


def _task(tmp_path, split, index, num_shards, items):
    manifest = tmp_path / f"manifest-{split}-{index}.json"
    manifest.write_text(sources.items_to_text(items))
    assert sources.items_from_text(manifest.read_text()) == list(items)
    return transforms.ShardTask(split, index, num_shards, str(manifest))


@tiers.dev("a Beam pipeline of every transform: seconds")
def test_convert_to_shards_writes_records_and_dead_letters(tmp_path):
    raw, files = _raw(tmp_path)
    out = tmp_path / "out"
    tasks = [
        _task(tmp_path, "train", 0, 2, (_item("good.JPEG", (1, 2, 30, 40)), _item("empty.JPEG"))),
        _task(tmp_path, "train", 1, 2, tuple(_item(n) for n in ("gray", "png", "text", "missing"))),
    ]
    p = test_pipeline.TestPipeline()
    outputs = p | beam.Create(tasks) | transforms.ConvertToShards(raw, str(out), [("n1", "one, first")], 64)
    assert_that(
        outputs["summaries"],
        equal_to(
            [
                transforms.ShardSummary(
                    "train", 0, "train-00000-of-00002.tfrecord", 1, [1], 1, 0, {"64x64": 1}
                ),
                transforms.ShardSummary(
                    "train", 1, "train-00001-of-00002.tfrecord", 2, [2], 0, 0, {"64x64": 2}
                ),
            ]
        ),
        label="Summaries",
    )
    reasons = outputs["rejected"] | beam.Map(lambda line: tuple(json.loads(line).values()))
    assert_that(
        reasons | beam.Map(lambda r: (r[0], r[1].split(":")[0])),
        equal_to(
            [
                ("train/n1/images/empty.JPEG", "empty file"),
                ("train/n1/images/text.JPEG", "not an image (unrecognised format)"),
                ("train/n1/images/missing.JPEG", "unreadable file"),
            ]
        ),
        label="Rejected",
    )
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(transforms.NAMESPACE))["counters"]
    }
    assert counters == {
        "images_written": 3,
        "images_rejected": 3,
        "images_reencoded": 1,
        "images_resized": 0,
        "shards_written": 2,
        "train_written": 3,
    }
    records = {}
    for shard in sorted(out.iterdir()):
        for raw_record in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator():
            record = schema.decode_example(raw_record)
            records[record["filename"]] = record
    assert sorted(p.name for p in out.iterdir()) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ], "no temporary files are left behind"
    assert sorted(records) == ["good.JPEG", "gray.JPEG", "png.JPEG"]
    assert records["good.JPEG"]["image"] == files["good.JPEG"]
    assert records["gray.JPEG"]["image"] == files["gray.JPEG"]
    assert records["png.JPEG"]["image"] != files["png.JPEG"]
    assert tf.io.decode_jpeg(records["png.JPEG"]["image"], channels=3).shape == (64, 64, 3)
    good = records["good.JPEG"]
    assert good["box"] == (1, 2, 30, 40) and good["label"] == 0 and good["wnid"] == "n1"
    assert good["class_name"] == "one, first" and good["source_split"] == "train"
    assert records["gray.JPEG"]["box"] is None


def test_empty_shard_still_written(tmp_path):
    out = tmp_path / "out"
    shard = schema.shard_name("unlabeled", 0, 1)
    with test_pipeline.TestPipeline() as p:
        outputs = (
            p
            | beam.Create([_task(tmp_path, "unlabeled", 0, 1, ())])
            | transforms.ConvertToShards(str(tmp_path), str(out), [], 64)
        )
        empty = {"count": 0, "class_counts": [], "boxes": 0, "boxes_cropped": 0, "source_sizes": {}}
        assert_that(
            outputs["summaries"] | beam.Map(transforms.count_line),
            equal_to([json.dumps({"split": "unlabeled", "index": 0, "shard": shard, **empty})]),
        )
    assert (out / shard).is_file() and (out / shard).stat().st_size == 0


@tiers.dev("a Beam pipeline: seconds")
def test_write_single_file_exact_name_even_when_empty(tmp_path):
    with test_pipeline.TestPipeline() as p:
        lines = p | "Lines" >> beam.Create(["b", "a"])
        _ = lines | "Full" >> transforms.WriteSingleFile(str(tmp_path / "x.jsonl"))
        nothing = p | "None" >> beam.Create([])
        _ = nothing | "Empty" >> transforms.WriteSingleFile(str(tmp_path / "empty.jsonl"))
    assert sorted((tmp_path / "x.jsonl").read_text().split()) == ["a", "b"]
    assert (tmp_path / "empty.jsonl").read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "x.jsonl"]


def _encode(image, fmt):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _boxed(height, width, box, mode):
    """Black ``height x width`` with a white box; for RGBA the box is transparent instead (white on white)."""
    xmin, ymin, xmax, ymax = box
    inside = np.zeros((height, width), bool)
    inside[ymin : ymax + 1, xmin : xmax + 1] = True
    if mode == "RGBA":
        alpha = np.where(inside, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([np.zeros((height, width, 3), np.uint8), alpha]), "RGBA")
    return Image.fromarray(np.where(inside, 255, 0).astype(np.uint8), "L").convert(mode)


# name -> (source image, label, box): a PNG, an RGBA PNG (portrait) and a grayscale JPEG whose box
# lies in the columns the crop cuts away (300 -> 96 wide, 16 columns cut on each side).
RESIZED = {
    "wide.JPEG": (_boxed(240, 320, (100, 60, 219, 179), "RGB"), "PNG", 0, (100, 60, 219, 179)),
    "alpha.JPEG": (_boxed(200, 90, (10, 30, 59, 149), "RGBA"), "PNG", 1, (10, 30, 59, 149)),
    "gray.JPEG": (_boxed(200, 300, (5, 50, 40, 120), "L"), "JPEG", 0, (5, 50, 40, 120)),
}


@pytest.mark.parametrize("policy", resize.POLICIES)
def test_other_sizes_are_resized_and_their_boxes_moved(tmp_path, policy):
    folder = tmp_path / "raw" / "train" / "n1" / "images"
    folder.mkdir(parents=True)
    items = []
    for name, (image, fmt, label, box) in RESIZED.items():
        (folder / name).write_bytes(_encode(image, fmt))
        items.append(sources.Item(f"train/n1/images/{name}", "train", label, box))
    classes = [("n1", "one"), ("n2", "two")]
    fn = transforms.ConvertShardFn(str(tmp_path / "raw"), str(tmp_path / "out"), classes, 64, policy)
    fn.setup()
    outputs = list(fn.process(_task(tmp_path, "train", 0, 1, items)))
    cropped = 1 if policy == "crop" else 0
    assert outputs == [
        transforms.ShardSummary(
            "train", 0, "train-00000-of-00001.tfrecord", 3, [2, 1], 3 - cropped, cropped,
            {"300x200": 1, "320x240": 1, "90x200": 1},
        )
    ]  # fmt: skip
    shard = tmp_path / "out" / "train-00000-of-00001.tfrecord"
    records = [schema.decode_example(r) for r in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator()]
    assert [r["filename"] for r in records] == list(RESIZED)
    for record in records:
        image, _, _, box = RESIZED[record["filename"]]
        width, height = image.size
        pixels = tf.io.decode_jpeg(record["image"], channels=3).numpy()
        assert pixels.shape == (64, 64, 3) and (record["height"], record["width"]) == (64, 64)
        # The stored pixels are the one resize of the one RGB conversion (alpha on white), as JPEG.
        want = resize.resize(rgb_images.to_rgb(image), 64, policy).numpy()
        assert np.abs(pixels.astype(float) - want).mean() < 2.0, record["filename"]
        moved = resize.resize_box(box, height, width, 64, policy)
        assert record["box"] == moved
        if moved is None:
            assert record["filename"] == "gray.JPEG" and policy == "crop"
            assert not np.any(pixels[..., 0] > 127), "nothing of the box is left in the picture"
            continue
        ys, xs = np.nonzero(pixels[..., 0] > 127)
        white = (xs.min(), ys.min(), xs.max(), ys.max())
        # JPEG blurs an edge by at most a pixel; the box is rounded outwards.
        assert all(abs(int(w) - m) <= 1 for w, m in zip(white, moved, strict=True)), (white, moved)
    if policy == "pad":
        assert np.all(tf.io.decode_jpeg(records[0]["image"]).numpy()[:4] < 8), "black bands above and below"


def test_a_square_jpeg_is_stored_as_it_is_without_pil_or_resize(monkeypatch):
    # Its bytes are kept; the one decode is the trainer's decoder's check (test_full_decode.py).
    data = _image_bytes(seed=4)

    def never(*args, **kwargs):
        raise AssertionError("the fast path parsed, converted or resized an S x S JPEG")

    monkeypatch.setattr(rgb_images, "open_image", never)
    monkeypatch.setattr(rgb_images, "to_rgb", never)
    monkeypatch.setattr(resize, "compiled", never)
    for policy in resize.POLICIES:
        result = images.validate_image(data, 64, policy)
        assert result == images.ValidImage(data, 64, 64, None, 64, 64)
    monkeypatch.undo()
    smaller = images.validate_image(data, 32, "crop")
    assert (smaller.height, smaller.width, smaller.source_height, smaller.source_width) == (32, 32, 64, 64)
    assert smaller.reencoded_from == "JPEG" and tf.io.decode_jpeg(smaller.data).shape == (32, 32, 3)


def _shrink_class(raw, wnid, keep):
    """Leaves ``keep`` train images of ``wnid`` (and their box rows)."""
    folder = raw / "train" / wnid / "images"
    names = sorted(p.name for p in folder.iterdir())
    for name in names[keep:]:
        (folder / name).unlink()
    boxes = raw / "train" / wnid / f"{wnid}_boxes.txt"
    rows = [row for row in boxes.read_text().splitlines() if row.split("\t")[0] in names[:keep]]
    boxes.write_text("".join(f"{row}\n" for row in rows))


def test_job_resizes_mixed_sizes_and_records_the_counts(tmp_path, caplog):
    raw, out = tmp_path / "raw", tmp_path / "out"
    spec = sample.SampleSpec(classes=2, train_per_class=12, val_per_class=2, test_images=2, seed=5)
    info = sample.write_sample_dataset(str(raw), spec)
    big, small = info["wnids"]
    # User photos of other sizes in the first class (the last one's box is cut away by the crop);
    # the second class keeps one image: more than 10x fewer.
    photos = {
        "photo_wide.JPEG": (_boxed(240, 320, (100, 60, 219, 179), "RGB"), "JPEG", (100, 60, 219, 179)),
        "photo_png.JPEG": (_boxed(375, 500, (200, 100, 299, 300), "RGBA"), "PNG", (200, 100, 299, 300)),
        "photo_cut.JPEG": RESIZED["gray.JPEG"][:2] + RESIZED["gray.JPEG"][3:],
    }
    with open(raw / "train" / big / f"{big}_boxes.txt", "a") as rows:
        for name, (image, fmt, box) in photos.items():
            (raw / "train" / big / "images" / name).write_bytes(_encode(image, fmt))
            rows.write(name + "".join(f"\t{v}" for v in box) + "\n")
    _shrink_class(raw, small, keep=1)
    args = ["--raw-dir", str(raw), "--output-dir", str(out), "--resize", "crop"]
    with caplog.at_level(logging.INFO, logger="preprocessing"):
        assert task.run(args) == 0
    metadata = json.loads((out / schema.METADATA_FILE).read_text())
    records = {}
    for split, entry in metadata["splits"].items():
        for shard in entry["shards"]:
            for raw_record in tf.data.TFRecordDataset(str(out / shard)).as_numpy_iterator():
                records.setdefault(split, []).append(schema.decode_example(raw_record))
    found = sum(len(split_records) for split_records in records.values())
    assert metadata["resize"] == {"policy": "crop", "size": 64}
    assert metadata["source_sizes"] == {"64x64": found - 3, "300x200": 1, "320x240": 1, "500x375": 1}
    assert list(metadata["source_sizes"]) == ["64x64", "300x200", "320x240", "500x375"], "most common first"
    for split, entry in metadata["splits"].items():
        split_records = records.get(split, [])
        assert entry["boxes"] == sum(r["box"] is not None for r in split_records), split
        if split == "unlabeled":
            assert "class_counts" not in entry
            continue
        assert entry["class_counts"] == [sum(r["label"] == i for r in split_records) for i in (0, 1)], split
    assert metadata["splits"]["test"]["class_counts"] == [2, 2]
    by_name = {r["filename"]: r for split_records in records.values() for r in split_records}
    for name, (image, _, box) in photos.items():
        width, height = image.size
        assert (by_name[name]["height"], by_name[name]["width"]) == (64, 64)
        assert by_name[name]["box"] == resize.resize_box(box, height, width, 64, "crop")
    assert by_name["photo_cut.JPEG"]["box"] is None
    info_read = dataset.load_metadata(str(out))
    assert info_read.resize_policy == "crop"
    assert info_read.class_counts("train") == tuple(metadata["splits"]["train"]["class_counts"])
    assert info_read.box_count("train") == metadata["splits"]["train"]["boxes"]
    lines = [r.getMessage() for r in caplog.records if r.name == "preprocessing"]
    train = metadata["splits"]["train"]["class_counts"]
    names = [c["name"] for c in metadata["classes"]]
    assert f'images per class: train {min(train)}-{max(train)} (fewest: "{names[1]}"),' in "\n".join(lines)
    assert f"resized 3 of {found} images to 64x64 (--resize crop); 1 boxes cut away by the crop" in "\n".join(
        lines
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("train classes are imbalanced:"), warnings
