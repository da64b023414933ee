"""Fixtures of the explanation tests: an untrained job dir, and datasets beside the sample: the
same records without boxes, or with boxes covering the whole image.

They are the Beam job's records of the sample (``sample_records``) written again record for
record through :func:`contracts.schema.encode_example`, the encoder the job itself uses, with
only the box changed: a user's folder of photos has no boxes, and some users write a
whole-image box for every photo.
"""

import json
import os
import shutil

import keras
import pytest
import tensorflow as tf

from contracts import schema
from tests.explain import small_cnn


def rewrite_boxes(data_dir, out_dir, box, count_boxes=True):
    """Copies a dataset with every record's box replaced.

    Args:
        data_dir: A dataset written by the Beam job.
        out_dir: Where the copy goes (must not exist).
        box: The box of every record (``(xmin, ymin, xmax, ymax)``) or ``None`` for none.
        count_boxes: Write ``splits.<split>.boxes`` into metadata.json, as the Beam job does;
            ``False`` leaves the count out, as in a dataset written before it existed.

    Returns:
        ``out_dir``.
    """
    shutil.copytree(data_dir, out_dir)
    with open(os.path.join(data_dir, schema.METADATA_FILE)) as f:
        metadata = json.load(f)
    for entry in metadata["splits"].values():
        for shard in entry["shards"]:
            records = tf.data.TFRecordDataset(os.path.join(data_dir, shard)).as_numpy_iterator()
            with tf.io.TFRecordWriter(os.path.join(out_dir, shard)) as writer:
                for raw in records:
                    record = schema.decode_example(raw)
                    writer.write(
                        schema.encode_example(
                            record["image"],
                            height=record["height"],
                            width=record["width"],
                            filename=record["filename"],
                            source_split=record["source_split"],
                            label=record["label"],
                            wnid=record["wnid"],
                            class_name=record["class_name"],
                            box=box,
                            image_format=record["format"],
                        )
                    )
        entry.pop("boxes", None)
        if count_boxes:
            entry["boxes"] = 0 if box is None else entry["count"]
    with open(os.path.join(out_dir, schema.METADATA_FILE), "w") as f:
        json.dump(metadata, f)
    return out_dir


@pytest.fixture(scope="module")
def boxless_records(sample_records, tmp_path_factory):
    """The sample without any box; metadata.json counts 0 boxes in every split (a folder of photos)."""
    return rewrite_boxes(sample_records[0], str(tmp_path_factory.mktemp("boxless") / "data"), None)


@pytest.fixture(scope="module")
def boxless_records_uncounted(sample_records, tmp_path_factory):
    """The sample without any box, written before metadata.json counted boxes (no ``boxes`` key)."""
    folder = str(tmp_path_factory.mktemp("boxless-uncounted") / "data")
    return rewrite_boxes(sample_records[0], folder, None, count_boxes=False)


@pytest.fixture(scope="module")
def whole_image_box_records(sample_records, sample_info, tmp_path_factory):
    """The sample with every box covering the whole image."""
    last = sample_info.image_size - 1
    folder = str(tmp_path_factory.mktemp("whole-image-boxes") / "data")
    return rewrite_boxes(sample_records[0], folder, (0, 0, last, last))


@pytest.fixture(scope="module")
def untrained_job(sample_records, tmp_path_factory):
    """A job dir with the small CNN's seeded initial weights: for the tests that need a model, not
    one that has learnt (error paths, where the outputs go, what is skipped)."""
    data_dir, _ = sample_records
    keras.utils.set_random_seed(0)
    job = tmp_path_factory.mktemp("untrained-job")
    small_cnn(64).save(str(job / "model.keras"))
    config = {"arch": "small_cnn", "policy": "none", "crop_size": 56, "data_dir": data_dir}
    (job / "config.json").write_text(json.dumps(config))
    return str(job), data_dir
