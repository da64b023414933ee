"""The Beam transforms on their own: TestPipeline + assert_that."""

import io
import json

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from contracts import schema
from preprocessing import sources, transforms


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


def test_convert_to_shards_writes_records_and_dead_letters(tmp_path):
    raw, files = _raw(tmp_path)
    out = tmp_path / "out"
    tasks = [
        _task(tmp_path, "train", 0, 2, (_item("good.JPEG", (1, 2, 30, 40)), _item("empty.JPEG"))),
        _task(tmp_path, "train", 1, 2, tuple(_item(n) for n in ("gray", "png", "text", "missing"))),
    ]
    p = test_pipeline.TestPipeline()
    outputs = (
        p | beam.Create(tasks) | transforms.ConvertToShards(raw, str(out), [("n1", "one, first")], (64, 64))
    )
    assert_that(
        outputs["summaries"],
        equal_to(
            [
                transforms.ShardSummary("train", 0, "train-00000-of-00002.tfrecord", 1),
                transforms.ShardSummary("train", 1, "train-00001-of-00002.tfrecord", 2),
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
            | transforms.ConvertToShards(str(tmp_path), str(out), [], (64, 64))
        )
        assert_that(
            outputs["summaries"] | beam.Map(transforms.count_line),
            equal_to([json.dumps({"split": "unlabeled", "index": 0, "shard": shard, "count": 0})]),
        )
    assert (out / shard).is_file() and (out / shard).stat().st_size == 0


def test_write_single_file_exact_name_even_when_empty(tmp_path):
    with test_pipeline.TestPipeline() as p:
        lines = p | "Lines" >> beam.Create(["b", "a"])
        _ = lines | "Full" >> transforms.WriteSingleFile(str(tmp_path / "x.jsonl"))
        nothing = p | "None" >> beam.Create([])
        _ = nothing | "Empty" >> transforms.WriteSingleFile(str(tmp_path / "empty.jsonl"))
    assert sorted((tmp_path / "x.jsonl").read_text().split()) == ["a", "b"]
    assert (tmp_path / "empty.jsonl").read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "x.jsonl"]
