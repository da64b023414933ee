"""trainer.predict over folders and gs:// prefixes: a CSV or JSON-lines row per image, batch by batch.

The photos are the sample generator's "user photos" (preprocessing/sample_photos.py:
mixed sizes, JPEG and PNG with upper- and lower-case extensions, grayscale and
RGBA, files one and two folders below their class folder), plus a corrupt
``.JPG``, a text file and hidden files. The model is an untrained tiny CNN in
a job dir naming the sample's records: every row is checked against the model
called directly on :func:`contracts.resize.resize`'s output.
"""

import csv
import json
import os
import re
import weakref

import keras
import numpy as np
import pytest
from PIL import Image

from contracts import images as rgb_images
from contracts import resize, storage
from preprocessing import sample_photos
from tests.explain import tiny_cnn
from trainer import export, predict, predict_output

CROP = 56
TOP_K = 3
# The same model called on another batch composition sums in another order (oneDNN).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def job(sample_records, tmp_path_factory):
    """A job dir of an untrained crop-policy tiny CNN (input 56) whose config names the sample's data dir."""
    data_dir, metadata = sample_records
    root = tmp_path_factory.mktemp("folders-job")
    keras.utils.set_random_seed(7)
    model = tiny_cnn(CROP, len(metadata["classes"]), filters=(8,))
    model.save(str(root / "model.keras"))
    config = {"arch": "tiny", "policy": "crop", "crop_size": CROP, "data_dir": data_dir}
    (root / "config.json").write_text(json.dumps(config))
    return str(root), model, metadata


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A photo tree with a corrupt image, a text file and hidden files; returns ``(root, images, broken)``.

    ``images`` are the paths predict must list, in its (sorted) order, ``broken`` among them.
    """
    root = tmp_path_factory.mktemp("folders-tree") / "photos"
    photos = sample_photos.write_photo_tree(
        str(root), sample_photos.PhotoSpec(classes=2, per_class=4, seed=3)
    )
    paths = [os.path.join(str(root), *photo.path.split("/")) for photo in photos]
    broken = os.path.join(str(root), photos[0].label, "2019", "broken.JPG")
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (root / "notes.txt").write_text("not a picture\n")
    # Left out as the preprocessing job leaves them out: a Finder file and an AppleDouble twin.
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / photos[1].label / "._img_001.jpg").write_bytes(b"\0\5\26\7 resource fork")
    return str(root), sorted([*paths, broken]), broken


def _expected(model, metadata, path):
    """The model's probabilities for one file: PIL, the dataset's resize, the centre crop, the model."""
    with Image.open(path) as image:
        pixels = rgb_images.to_rgb(image)
    size = metadata["image_size"][0]
    policy = metadata.get("resize", {}).get("policy", resize.DEFAULT_POLICY)
    square = np.asarray(resize.resize(pixels, size, policy), np.float32)
    offset = (size - CROP) // 2
    return np.asarray(model(square[None, offset : offset + CROP, offset : offset + CROP], training=False))[0]


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    return table[0], [dict(zip(table[0], values, strict=True)) for values in table[1:]]


def _check_rows(rows, job, broken):
    """Every row is its image's top-k from the model called directly; the broken file an error row."""
    _, model, metadata = job
    names = [c["name"] for c in metadata["classes"]]
    ranked = [
        f"{column}_{rank}" for rank in range(1, TOP_K + 1) for column in ("class", "index", "probability")
    ]
    for row in rows:
        if row["image"] == broken:
            assert row["error"].startswith("cannot read image (") and not any(row[c] for c in ranked)
            continue
        assert row["error"] == ""
        expected = _expected(model, metadata, row["image"])
        order = np.argsort(-expected, kind="stable")[:TOP_K]
        assert [int(row[f"index_{r}"]) for r in range(1, TOP_K + 1)] == order.tolist(), row
        assert [row[f"class_{r}"] for r in range(1, TOP_K + 1)] == [names[i] for i in order]
        probabilities = [float(row[f"probability_{r}"]) for r in range(1, TOP_K + 1)]
        np.testing.assert_allclose(probabilities, expected[order], atol=TOLERANCE)


def test_a_nested_folder_to_csv_rows_checked_against_the_model(job, tree, tmp_path, capsys):
    root, images, broken = tree
    out = tmp_path / "preds.csv"
    argv = ["--model", job[0], "--top-k", str(TOP_K), "--output", str(out), root]
    assert predict.main(argv) == 1  # The corrupt file.
    captured = capsys.readouterr()
    assert captured.out == ""
    header, rows = _read_csv(out)
    assert (
        header
        == predict_output.csv_header(TOP_K)
        == [
            "image",
            *("class_1", "index_1", "probability_1", "class_2", "index_2", "probability_2"),
            *("class_3", "index_3", "probability_3", "error"),
        ]
    )
    # Every image below the folder once, in sorted order; the text and hidden files are no rows.
    assert [row["image"] for row in rows] == images and len(images) == 9
    _check_rows(rows, job, broken)
    lines = captured.err.splitlines()
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d predict: {re.escape(root)}: 9 images; left out 1 other files \(not an image "
        r"extension\), 2 hidden or system files",
        lines[0],
    ), lines
    error = next(row["error"] for row in rows if row["image"] == broken)
    assert [line for line in lines if line.startswith("error: ")] == [f"error: {broken}: {error}"]
    assert re.fullmatch(rf"\d\d:\d\d:\d\d predict: 9 rows, 1 of them errors, written to {out}", lines[-1])


def test_files_and_folders_to_json_lines_are_the_json_documents_entries(job, tree, tmp_path, capsys):
    _, images, broken = tree
    folder = os.path.dirname(os.path.dirname(broken))  # The first class: the corrupt file is in it.
    argv = ["--model", job[0], images[-1], folder]
    assert predict.main([*argv, "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    out = tmp_path / "preds.JSONL"  # The extension in any letter case.
    assert predict.main([*argv, "--output", str(out)]) == 1
    lines = out.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["image"] for row in rows] == [
        images[-1],
        *(p for p in images if p.startswith(folder + os.sep)),
    ]
    assert [row for row in rows if "error" not in row] == document["predictions"]
    assert [row for row in rows if "error" in row] == document["errors"] != []
    assert [len(row["top"]) for row in rows if "top" in row] == [predict.TOP_K] * (len(rows) - 1)


def test_rows_are_written_batch_by_batch_and_decoded_images_do_not_pile_up(
    job, tree, tmp_path, capsys, monkeypatch
):
    root, images, _ = tree
    out = tmp_path / "stream.csv"
    monkeypatch.setattr(predict, "BATCH_SIZE", 2)
    decode = predict.decode_image
    lines_in_file, alive, peak = [], [], [0]

    def watched_decode(data):
        # What the file holds when this image is read, and how many decoded images are still alive.
        lines_in_file.append(len(out.read_text(encoding="utf-8").splitlines()))
        image = decode(data)
        # No gc.collect(): arrays are freed by reference counting, the moment nothing holds them.
        alive[:] = [ref for ref in alive if ref() is not None] + [weakref.ref(image)]
        peak[0] = max(peak[0], len(alive))
        return image

    monkeypatch.setattr(predict, "decode_image", watched_decode)
    argv = ["--model", job[0], "--top-k", str(TOP_K), "--output", str(out), root]
    assert predict.main(argv) == 1
    # Reading batch b (2 images each), the file already holds the header and the rows of batches 0..b-1.
    assert lines_in_file == [1 + 2 * (i // 2) for i in range(len(images))]
    # Never more decoded images alive than one batch holds (the corrupt file decodes to nothing).
    assert peak[0] == 2
    _, rows = _read_csv(out)
    assert [row["image"] for row in rows] == images
    counts = re.findall(r"predict: (\d+/9) images, [\d.]+ s", capsys.readouterr().err)
    assert counts == ["2/9", "4/9", "6/9", "8/9", "9/9"]


def test_a_gcs_prefix_to_a_csv_in_the_bucket(job, tree, tmp_path, gcs_bucket, capsys):
    root, images, _ = tree
    bucket = storage.gcs_client().bucket(gcs_bucket)
    for path in storage.list_files(root, recursive=True):  # The text and hidden files too.
        bucket.blob("shots/" + os.path.relpath(path, root).replace(os.sep, "/")).upload_from_filename(path)
    prefix, target = f"gs://{gcs_bucket}/shots", f"gs://{gcs_bucket}/out/preds.csv"
    argv = ["--model", job[0], "--top-k", str(TOP_K), "--output"]
    assert predict.main([*argv, target, prefix]) == 1
    capsys.readouterr()
    remote = tmp_path / "remote.csv"
    storage.download_file(target, str(remote))
    local = tmp_path / "local.csv"
    assert predict.main([*argv, str(local), root]) == 1
    _, remote_rows = _read_csv(remote)
    _, local_rows = _read_csv(local)
    uris = [f"{prefix}/{os.path.relpath(path, root).replace(os.sep, '/')}" for path in images]
    assert [row["image"] for row in remote_rows] == uris
    for remote_row, local_row in zip(remote_rows, local_rows, strict=True):
        # PIL's message names its in-memory file object (an address), the same in both but for that.
        errors = [re.sub(r" at 0x[0-9a-f]+", "", row.pop("error")) for row in (remote_row, local_row)]
        assert errors[0] == errors[1]
        assert {**remote_row, "image": local_row["image"]} == local_row


def test_the_export_gives_the_same_rows(job, tree, tmp_path, capsys):
    root, images, broken = tree
    _, model, metadata = job
    folder = str(tmp_path / "export")
    export.export_saved_model(
        model,
        folder,
        layer="features",
        wnids=[c["wnid"] for c in metadata["classes"]],
        class_names=[c["name"] for c in metadata["classes"]],
        image_size=metadata["image_size"][0],
        policy="crop",
        crop_size=CROP,
        resize_policy=metadata.get("resize", {}).get("policy", resize.DEFAULT_POLICY),
    )
    out = tmp_path / "export.csv"
    assert predict.main(["--model", folder, "--top-k", str(TOP_K), "--output", str(out), root]) == 1
    _, rows = _read_csv(out)
    assert [row["image"] for row in rows] == images
    _check_rows(rows, job, broken)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output", "{tmp}/preds.txt", "x.jpg"], "must end with .csv or .jsonl"),
        (["--json", "--output", "{tmp}/preds.csv", "x.jpg"], "give one of them"),
        (["--output", "{tmp}/taken.csv", "x.jpg"], "is a folder, not a file"),
        (["--output", "{tmp}/preds.csv", "{tmp}/empty"], "no image files (.jpg, .jpeg, .png"),
        (["{tmp}/text"], "no image files"),
    ],
)
def test_bad_outputs_and_imageless_folders_exit_2_with_one_line(job, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken.csv").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("no picture here\n")
    argv = ["--model", job[0], *(a.format(tmp=tmp_path) for a in argv)]
    assert predict.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "preds.csv").exists()


def test_csv_rows_pad_ranks_past_the_classes_and_carry_the_panel():
    top = [{"rank": 1, "index": 4, "class": "cat, tabby", "probability": 0.75}]
    header = predict_output.csv_header(2, gradcam=True)
    assert header[-2:] == ["gradcam", "error"]
    row = {"image": "a.jpg", "top": top, "gradcam": "cams/a.png"}
    assert predict_output.csv_row(row, 2, gradcam=True) == [
        "a.jpg",
        "cat, tabby",
        4,
        0.75,
        "",
        "",
        "",
        "cams/a.png",
        "",
    ]
    error = {"image": "b.jpg", "error": "cannot read image (x)"}
    assert predict_output.csv_row(error, 2) == ["b.jpg", "", "", "", "", "", "", "cannot read image (x)"]
    assert len(predict_output.csv_row(error, 2)) == len(predict_output.csv_header(2))
