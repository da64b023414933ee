"""A user's own photos, end to end: a class-per-folder tree and a CSV manifest to an exported model.

The photos come from preprocessing.sample_photos (mixed sizes, JPEG and PNG,
grayscale and RGBA, class names with a space and a non-ASCII letter, files
nested below their class folder). Each source goes through the real Beam job
with only ``--raw-dir``, ``--output-dir`` and ``--image-size`` (the README's
"Your own photos" commands), then through the trainer's CLI with its defaults
(cut to a few steps), and the exported model and ``model.keras`` (through
``trainer.predict``) must agree on the raw non-square files. The trainer reads
records, not layouts: it runs once, on the folder tree's records.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from contracts import schema
from preprocessing import sample_photos, task
from tests import tiers
from tests.trainer import helpers
from trainer import export, predict

IMAGE_SIZE = 48
SPEC = sample_photos.PhotoSpec(classes=3, per_class=10, seed=4)
# Only what the README's two commands give, plus a short budget: the test checks the path, not accuracy.
SHORT = ["--epochs", "1", "--steps-per-epoch", "2", "--validation-steps", "1", "--batch-size", "8"]


def _records(data_dir, metadata, split):
    shards = [os.path.join(data_dir, name) for name in metadata["splits"][split]["shards"]]
    return [schema.decode_example(r.numpy()) for r in tf.data.TFRecordDataset(shards)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    out = tmp_path_factory.mktemp("own-photos")
    written, rows = sample_photos.write_sample_photos(str(out), SPEC, manifest=True)
    return out, written, rows


def _convert(raw, data_dir):
    """The README's Beam command on ``raw``; returns the written metadata."""
    code = task.run(["--raw-dir", str(raw), "--output-dir", data_dir, "--image-size", str(IMAGE_SIZE)])
    assert code == 0
    with open(os.path.join(data_dir, schema.METADATA_FILE)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def folders_records(photos, tmp_path_factory):
    out, _, _ = photos
    data_dir = str(tmp_path_factory.mktemp("folders") / "data")
    return data_dir, _convert(out / sample_photos.TREE, data_dir)


@pytest.fixture(scope="module")
def manifest_records(photos, tmp_path_factory):
    out, _, _ = photos
    data_dir = str(tmp_path_factory.mktemp("manifest") / "data")
    return data_dir, _convert(out / sample_photos.MANIFESTS[0], data_dir)


@pytest.fixture(scope="module", params=["folders", "manifest"])
@tiers.dev("each source through the Beam job (named by the parameter, so the scan cannot see it)")
def converted(request, photos):
    """``(layout, data_dir, metadata, written)`` of each source through the Beam job."""
    _, written, _ = photos
    data_dir, metadata = request.getfixturevalue(f"{request.param}_records")
    return request.param, data_dir, metadata, written


@pytest.fixture(scope="module")
@tiers.long("a user's photos through the trainer and the export")
def trained(folders_records, tmp_path_factory):
    """The trainer's defaults (cut to a few steps) on the folder tree's records: ``(job_dir, metadata)``."""
    data_dir, metadata = folders_records
    job_dir = str(tmp_path_factory.mktemp("job") / "job")
    proc = helpers.run_cli(["--data-dir", data_dir, "--job-dir", job_dir, *SHORT])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return job_dir, metadata


def test_every_photo_is_a_record_with_its_class_name(converted):
    layout, data_dir, metadata, written = converted
    assert metadata["layout"] == layout
    assert metadata["inputs"] == {"found": len(written), "written": len(written), "rejected": 0}
    names = sorted({photo.label for photo in written})
    assert [c["name"] for c in metadata["classes"]] == names, "names as written, in sorted order"
    assert metadata["resize"] == {"policy": "crop", "size": IMAGE_SIZE}
    assert sum(metadata["source_sizes"].values()) == len(written)
    assert len(metadata["source_sizes"]) == len(sample_photos.SIZES)
    for split in ("train", "valid", "test"):
        records = _records(data_dir, metadata, split)
        assert records, f"{split} is carved where the source has none"
        assert all((r["height"], r["width"]) == (IMAGE_SIZE, IMAGE_SIZE) for r in records)
        assert all(r["class_name"] == names[r["label"]] for r in records)
        labels = [r["label"] for r in records]
        assert metadata["splits"][split]["class_counts"] == [labels.count(i) for i in range(len(names))]


def test_the_manifest_splits_are_kept_exactly(manifest_records, photos):
    data_dir, metadata = manifest_records
    _, written, rows = photos
    words = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "test": "test"}
    # Each photo's file name is unique within its class; a record keeps the name and the class.
    given = {
        (row["label"], row["path"].rsplit("/", 1)[-1]): words[row["split"].lower()]
        for row in rows
        if row["split"]
    }
    assert given
    found = {}
    for split in ("train", "valid", "test"):
        for record in _records(data_dir, metadata, split):
            found[(record["class_name"], record["filename"])] = split
    assert len(found) == len(written)
    assert {key: found[key] for key in given} == given


def test_the_export_and_model_keras_agree_on_raw_non_square_files(trained, photos, capsys):
    job_dir, metadata = trained
    out, written, _ = photos
    # RGBA PNGs too: predict and the export composite alpha on white alike (contracts.decode).
    non_square = [p for p in written if p.size[0] != p.size[1]]
    chosen = [p for p in non_square if p.mode != "RGBA"][:6] + [p for p in non_square if p.mode == "RGBA"][:2]
    assert {p.mode for p in chosen} == {"RGB", "L", "RGBA"} and len({p.size for p in chosen}) > 1
    files = [str(out / sample_photos.TREE / p.path) for p in chosen]
    num_classes = len(metadata["classes"])
    assert predict.main(["--model", job_dir, "--json", "--top-k", str(num_classes), *files]) == 0
    document = json.loads(capsys.readouterr().out)
    from_keras = np.zeros((len(files), num_classes))
    for row, entry in enumerate(document["predictions"]):
        for top in entry["top"]:
            from_keras[row, top["index"]] = top["probability"]
    loaded = export.LoadedExport(os.path.join(job_dir, "export"))
    served = loaded(export.SIGNATURE, [open(f, "rb").read() for f in files])
    from_export = np.zeros_like(from_keras)
    for row, indices in enumerate(served["classes"]):
        from_export[row, np.asarray(indices)] = served["probabilities"][row]
    # Photos decode through PIL in predict and through TensorFlow in the export (libjpeg's
    # accurate DCT in both, alpha composited on white by one formula: the same pixels).
    np.testing.assert_allclose(from_export, from_keras, atol=1e-3)
    assert from_keras.sum(axis=1) == pytest.approx(np.ones(len(files)), abs=1e-4)
