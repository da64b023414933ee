"""The Beam job (preprocessing.task.run, in-process) on class-per-folder trees and manifests.

Every input is accounted for (written + rejected == found), the source's
splits are kept, class names with spaces and non-ASCII characters reach
metadata.json and the records, a failed run does not block its retry, and a
source without test data is refused before anything is converted.
"""

import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from contracts import schema
from preprocessing import fetch, layouts, sample_photos, task

SHARDS = ["--num-shards-train", "2", "--num-shards-valid", "1", "--num-shards-test", "1"]
SQUARE = ((64, 64),)
CANONICAL = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "test": "test"}


def _run(capsys, *args):
    code = task.run([str(a) for a in [*args, *SHARDS]])
    return code, capsys.readouterr().err


def _output(out_dir):
    """``(metadata, {(class name, file name): (split, record)})`` of a finished job."""
    with open(os.path.join(out_dir, schema.METADATA_FILE)) as f:
        metadata = json.load(f)
    records = {}
    for split, info in metadata["splits"].items():
        for shard in info["shards"]:
            for raw in tf.data.TFRecordDataset(os.path.join(out_dir, shard)).as_numpy_iterator():
                record = schema.decode_example(raw)
                key = (record["class_name"], record["filename"])
                assert key not in records, f"{key} written twice"
                records[key] = (split, record)
    return metadata, records


def _key(photo):
    return photo.label, photo.path.rsplit("/", 1)[-1]


def _accounted(metadata, found):
    inputs = metadata["inputs"]
    assert inputs["found"] == found and inputs["written"] + inputs["rejected"] == found
    return inputs


def test_class_folders_every_input_accounted_and_names_kept(tmp_path, capsys, caplog):
    root = tmp_path / "photos"
    photos = sample_photos.write_photo_tree(str(root), sample_photos.PhotoSpec(sizes=SQUARE))
    (root / photos[0].label / "notes.txt").write_text("not a photo")
    (root / ".DS_Store").write_bytes(b"\0")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="preprocessing"):
        code, err = _run(capsys, "--raw-dir", root, "--output-dir", out, "--max-reject-fraction", 0.1)
    assert code == 0, err
    metadata, records = _output(out)
    assert metadata["layout"] == layouts.FOLDERS
    names = sorted({p.label for p in photos})
    assert metadata["classes"] == [{"index": i, "wnid": n, "name": n} for i, n in enumerate(names)]
    assert _accounted(metadata, len(photos) + 1) == {"found": 37, "written": 36, "rejected": 1}
    assert set(records) == {_key(p) for p in photos}
    for photo in photos:
        split, record = records[_key(photo)]
        assert (record["label"], record["wnid"]) == (names.index(photo.label), photo.label)
        assert record["source_split"] == "" and split in ("train", "valid", "test")
    assert {split for split, _ in records.values()} == {"train", "valid", "test"}, "valid and test carved"
    rejected = [json.loads(line) for line in (out / schema.REJECTED_FILE).read_text().splitlines()]
    assert rejected == [{"path": f"{photos[0].label}/notes.txt", "reason": layouts.NOT_AN_IMAGE}]
    assert "accounted for 37 inputs (37 files; 1 hidden or system files skipped, not inputs)" in caplog.text


def test_split_folders_are_kept_exactly(tmp_path, capsys):
    root = tmp_path / "photos"
    spec = sample_photos.PhotoSpec(sizes=SQUARE, split_folders=True, per_class=6)
    photos = sample_photos.write_photo_tree(str(root), spec)
    out = tmp_path / "out"
    code, err = _run(capsys, "--raw-dir", root, "--output-dir", out)
    assert code == 0, err
    metadata, records = _output(out)
    _accounted(metadata, len(photos))
    assert {_key(p): p.split for p in photos} == {key: split for key, (split, _) in records.items()}
    assert {records[_key(p)][1]["source_split"] for p in photos if p.split == "valid"} == {"val"}


@pytest.mark.parametrize(("name", "absolute"), [("manifest.csv", False), ("lists/manifest.jsonl", True)])
def test_manifest_rows_become_records_with_their_splits_and_boxes(tmp_path, capsys, caplog, name, absolute):
    photos, _ = sample_photos.write_sample_photos(str(tmp_path), sample_photos.PhotoSpec(sizes=SQUARE))
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    rows = sample_photos.manifest_rows(photos, str(tmp_path / "photos"), str(path.parent), absolute=absolute)
    missing = {"path": "photos/gone.jpg", "label": photos[0].label, "split": "", "box": None}
    sample_photos.write_manifest(str(path), [*rows, missing])
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="preprocessing"):
        code, err = _run(capsys, "--raw-dir", path, "--output-dir", out, "--max-reject-fraction", 0.1)
    assert code == 0, err
    metadata, records = _output(out)
    assert metadata["layout"] == layouts.MANIFEST
    assert _accounted(metadata, len(rows) + 1)["rejected"] == 1
    assert (
        f"accounted for {len(rows) + 1} inputs ({len(rows) + 1} manifest rows, 1 of them without a file)"
        in (caplog.text)
    )
    for photo, row in zip(photos, rows, strict=True):
        split, record = records[_key(photo)]
        assert split == CANONICAL.get(row["split"].lower(), "train"), "kept exactly; the rest train"
        assert record["source_split"] == row["split"]
        assert record["box"] == (tuple(row["box"]) if row["box"] else None)
    kept = [json.loads(line) for line in (out / schema.REJECTED_FILE).read_text().splitlines()]
    line = len(rows) + (2 if name.endswith(".csv") else 1)  # The CSV's header is its line 1.
    assert kept == [{"path": "photos/gone.jpg", "reason": f"{path.name} line {line}: the file is missing"}]


def test_photos_of_mixed_sizes_and_modes_all_become_square_records(tmp_path, capsys):
    root = tmp_path / "photos"
    photos = sample_photos.write_photo_tree(str(root), sample_photos.PhotoSpec(per_class=8))
    assert {p.size for p in photos} == set(sample_photos.SIZES) and {p.mode for p in photos} == {
        "RGB",
        "L",
        "RGBA",
    }
    out = tmp_path / "out"
    code, err = _run(capsys, "--raw-dir", root, "--output-dir", out)
    assert code == 0, err
    metadata, records = _output(out)
    assert _accounted(metadata, len(photos))["written"] == len(photos)
    for _, record in records.values():
        assert (record["height"], record["width"]) == (64, 64)
        assert tf.io.decode_jpeg(record["image"], channels=3).shape == (64, 64, 3)


def _names_of_rejects_files(text):
    return set(re.findall(r"rejected[\w.]*\.jsonl", text))


def test_a_failed_run_does_not_block_its_retry(tmp_path, capsys, caplog):
    root = tmp_path / "photos"
    photos = sample_photos.write_photo_tree(str(root), sample_photos.PhotoSpec(sizes=SQUARE, per_class=6))
    (root / photos[0].label / "notes.txt").write_text("not a photo")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="preprocessing"):
        code, err = _run(capsys, "--raw-dir", root, "--output-dir", out, "--max-reject-fraction", 0)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert os.listdir(out) == [fetch.FAILED_REJECTS_FILE]
    assert _names_of_rejects_files(caplog.text + err) == {fetch.FAILED_REJECTS_FILE}, "one rejects file named"

    caplog.clear()
    code, err = _run(capsys, "--raw-dir", root, "--output-dir", out, "--max-reject-fraction", 0.1)
    assert code == 0, err
    names = os.listdir(out)
    assert fetch.FAILED_REJECTS_FILE not in names and schema.METADATA_FILE in names, "the retry replaced it"
    assert len((out / schema.REJECTED_FILE).read_text().splitlines()) == 1

    # A complete earlier output still needs --overwrite.
    code, err = _run(capsys, "--raw-dir", root, "--output-dir", out)
    assert code == 2 and "--overwrite" in err


def test_no_test_split_is_refused_before_anything_is_converted(tmp_path, capsys):
    root = tmp_path / "photos"
    spec = sample_photos.PhotoSpec(sizes=SQUARE, split_folders=True, per_class=6)
    sample_photos.write_photo_tree(str(root), spec)
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "test").rmdir()
    out = tmp_path / "out"
    code, err = _run(capsys, "--raw-dir", root, "--output-dir", out, "--test-fraction", 0)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and "pass --test-fraction" in err and "give a test split" in err
    assert not out.exists(), "nothing converted, nothing written"


def test_class_names_reach_the_records_unchanged(tmp_path, capsys):
    # A name made of spaces, accents, CJK and an emoji with joiners (format characters) is a name.
    root = tmp_path / "photos"
    photos = sample_photos.write_photo_tree(str(root), sample_photos.PhotoSpec(sizes=SQUARE, per_class=5))
    odd = "  Ça 猫 👩‍👩‍👧 "
    os.rename(root / photos[0].label, root / odd)
    out = tmp_path / "out"
    code, err = _run(capsys, "--raw-dir", root, "--output-dir", out)
    assert code == 0, err
    metadata, records = _output(out)
    assert odd in [c["name"] for c in metadata["classes"]]
    assert sum(1 for (name, _), (_, r) in records.items() if name == odd and r["wnid"] == odd) == 5
    assert np.array_equal(sorted(c["index"] for c in metadata["classes"]), np.arange(3))


def test_a_tree_and_a_manifest_on_gcs(tmp_path, capsys, gcs_bucket):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    photos, rows = sample_photos.write_sample_photos(
        str(tmp_path / "raw"), sample_photos.PhotoSpec(sizes=SQUARE, per_class=6), manifest=True
    )
    bucket = storage.Client(project="test-project", credentials=AnonymousCredentials()).bucket(gcs_bucket)
    for path in (tmp_path / "raw").rglob("*"):
        if path.is_file():
            bucket.blob(f"in/{path.relative_to(tmp_path / 'raw').as_posix()}").upload_from_filename(str(path))
    for source, layout in (("in/photos", layouts.FOLDERS), ("in/manifest.csv", layouts.MANIFEST)):
        out = tmp_path / layout
        code, err = _run(capsys, "--raw-dir", f"gs://{gcs_bucket}/{source}", "--output-dir", out)
        assert code == 0, err
        metadata, records = _output(out)
        assert metadata["layout"] == layout and set(records) == {_key(p) for p in photos}
        _accounted(metadata, len(photos))
    for photo, row in zip(photos, rows, strict=True):
        assert records[_key(photo)][0] == CANONICAL.get(row["split"].lower(), "train")
