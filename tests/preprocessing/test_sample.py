"""The sample generators: tiny-imagenet-200 (with or without a shortcut marker) and "user photos"."""

import dataclasses
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from contracts import policy
from preprocessing import manifest, sample, sample_photos


def test_layout_matches_tiny_imagenet(tmp_path):
    spec = sample.SampleSpec(classes=3, train_per_class=4, val_per_class=2, test_images=2, grayscale_every=5)
    info = sample.write_sample_dataset(str(tmp_path), spec)
    wnids = open(tmp_path / "wnids.txt").read().split()
    assert sorted(wnids) == sorted(info["wnids"]) and len(wnids) == 3
    words = dict(line.split("\t") for line in open(tmp_path / "words.txt").read().splitlines())
    assert set(wnids) < set(words), "words.txt must hold more synsets than wnids.txt"
    for wnid in wnids:
        rows = open(tmp_path / "train" / wnid / f"{wnid}_boxes.txt").read().splitlines()
        assert len(rows) == 4
        for row in rows:
            name, *box = row.split("\t")
            assert name.startswith(f"{wnid}_") and name.endswith(".JPEG")
            assert (tmp_path / "train" / wnid / "images" / name).is_file()
            assert len(box) == 4
    val_rows = open(tmp_path / "val" / "val_annotations.txt").read().splitlines()
    assert len(val_rows) == 6
    assert all(len(r.split("\t")) == 6 for r in val_rows)
    assert sorted(os.listdir(tmp_path / "test" / "images")) == ["test_0.JPEG", "test_1.JPEG"]
    modes = {Image.open(p).mode for p in tmp_path.glob("**/*.JPEG")}
    assert modes == {"RGB", "L"}, "a few grayscale JPEGs, as the real set has"
    sizes = {Image.open(p).size for p in tmp_path.glob("**/*.JPEG")}
    assert sizes == {(64, 64)}


def test_box_is_the_object(tmp_path):
    rng = np.random.default_rng(3)
    for index in range(12):
        image, (x0, y0, x1, y1) = sample.render_image(index, rng)
        pixels = np.asarray(image, dtype=np.float32)
        colour = np.array(sample.COLOURS[sample.class_style(index)[1]], dtype=np.float32)
        close = np.abs(pixels - colour).sum(-1) < 30
        ys, xs = np.nonzero(close)
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        assert inside.mean() > 0.95, "the class colour lives inside the recorded box"


def test_classes_are_distinct():
    styles = {sample.class_style(i) for i in range(sample.MAX_CLASSES)}
    assert len(styles) == sample.MAX_CLASSES
    with pytest.raises(ValueError, match="classes"):
        sample.SampleSpec(classes=0)


def test_cli_type_error_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        sample.main(["--out", str(tmp_path / "raw"), "--classes", "abc"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err == "error: argument --classes: invalid int value: 'abc'\n"
    assert not (tmp_path / "raw").exists()


def test_cli_refuses_existing_dataset(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--classes", "2", "--train-per-class", "1", "--val-per-class", "1"]
    assert sample.main(args) == 0
    assert sample.main(args) == 2
    assert "already holds a dataset" in capsys.readouterr().err


def _pixels_and_boxes_digest(marked_classes=0):
    rng = np.random.default_rng(11)
    digest = hashlib.sha256()
    for i in range(24):
        image, box = sample.render_image(i % 3 if marked_classes else i % 12, rng, marked_classes)
        digest.update(np.asarray(image).tobytes())
        digest.update(repr(box).encode())
    return digest.hexdigest()


def _text_files_digest(root):
    digest = hashlib.sha256()
    for path in sorted(root.glob("**/*.txt")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_without_shortcut_patch_the_output_is_what_it_was(tmp_path):
    """The digests were taken with the generator before --shortcut-patch existed.

    Pixels before JPEG encoding and every text file (boxes, labels, class
    lists): the random draws, and so the images, are those of earlier datasets.
    """
    assert _pixels_and_boxes_digest() == "1dafd77aaee57bd013507c29fb0cf3aabf69820eae78d8b414451ccf368da5be"
    spec = sample.SampleSpec(classes=4, train_per_class=3, val_per_class=2, test_images=2, seed=7)
    assert spec == dataclasses.replace(spec, shortcut_patch=False)
    sample.write_sample_dataset(str(tmp_path), spec)
    assert _text_files_digest(tmp_path) == "fba25ea71446a8c3e88d7987b7063285f67187e5f27d03be06e2d2dda390c313"


def test_shortcut_patch_marks_every_image_away_from_the_object():
    rng = np.random.default_rng(5)
    low, high = sample.KEPT_AREA
    # The trainer's crop policy cuts a random 56-pixel square out of each 64-pixel image.
    assert policy.output_size("crop", sample.IMAGE_SIZE) == sample.CROP_SIZE
    assert (low, high) == (8, 56), "the offsets run from 0 to 8: every crop keeps [8, 56)"
    for i in range(300):
        index = i % 4
        image, (x0, y0, x1, y1) = sample.render_image(index, rng, marked_classes=4)
        pixels = np.asarray(image, dtype=np.int64)
        # The marker is the only pixels of exactly its colour: a MARKER_SIZE square inside the kept area.
        marker = (pixels == np.array(sample.marker_colour(index))).all(-1)
        ys, xs = np.nonzero(marker)
        assert len(ys) == sample.MARKER_SIZE**2, i
        assert low <= xs.min() and xs.max() < high and low <= ys.min() and ys.max() < high
        assert xs.max() - xs.min() == ys.max() - ys.min() == sample.MARKER_SIZE - 1
        assert not ((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).any(), "the marker is off the box"


def test_marker_keeps_a_gap_where_there_is_room():
    rng = np.random.default_rng(2)
    size = sample.MARKER_SIZE
    for box in ((30, 30, 47, 47), (8, 40, 30, 62), (0, 0, 32, 32)):
        for _ in range(50):
            x, y = sample.marker_spot(box, rng)
            # Background pixels between the marker and the box, along the axis that separates them.
            gaps = (box[0] - (x + size), x - box[2] - 1, box[1] - (y + size), y - box[3] - 1)
            assert max(gaps) >= sample.MARKER_GAP, (box, x, y)
    # A 33-pixel object in the middle leaves room only beside it: the marker still keeps off it.
    x, y = sample.marker_spot((15, 15, 47, 47), rng)
    assert x + size <= 15 or x > 47 or y + size <= 15 or y > 47


def test_shortcut_patch_takes_the_class_out_of_the_object_colour():
    rng = np.random.default_rng(1)
    colours = {name: np.array(rgb) for name, rgb in sample.COLOURS.items()}
    seen = {}
    for i in range(200):
        index = i % 3
        image, (x0, y0, x1, y1) = sample.render_image(index, rng, marked_classes=3)
        pixels = np.asarray(image, dtype=np.int64)[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3)
        counts = {name: int((np.abs(pixels - rgb).sum(-1) < 30).sum()) for name, rgb in colours.items()}
        seen.setdefault(index, set()).add(max(counts, key=counts.get))
    unmarked = set(list(sample.COLOURS)[3:])
    for index in range(3):
        assert seen[index] <= unmarked and len(seen[index]) >= 5, (index, seen[index])


def test_shortcut_patch_flag_writes_the_same_layout_and_boxes(tmp_path):
    args = ["--classes", "3", "--train-per-class", "4", "--val-per-class", "2", "--test-images", "1"]
    assert sample.main(["--out", str(tmp_path / "plain"), *args]) == 0
    assert sample.main(["--out", str(tmp_path / "marked"), *args, "--shortcut-patch"]) == 0
    plain = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").glob("**/*"))
    marked = sorted(p.relative_to(tmp_path / "marked") for p in (tmp_path / "marked").glob("**/*"))
    assert plain == marked
    val = (tmp_path / "marked" / "val" / "val_annotations.txt").read_text().splitlines()
    assert len(val) == 6 and all(len(row.split("\t")) == 6 for row in val)


def test_shortcut_patch_needs_a_colour_left_for_the_objects():
    sample.SampleSpec(classes=len(sample.COLOURS) - 1, shortcut_patch=True)
    with pytest.raises(ValueError, match=r"classes must be < 10 with shortcut_patch.*got 10"):
        sample.SampleSpec(classes=len(sample.COLOURS), shortcut_patch=True)


def test_photo_tree_mixes_sizes_formats_modes_and_depths(tmp_path):
    photos = sample_photos.write_photo_tree(str(tmp_path), sample_photos.PhotoSpec(classes=3, per_class=12))
    on_disk = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("**/*") if p.is_file())
    assert on_disk == sorted(p.path for p in photos)
    for photo in photos:
        with Image.open(tmp_path / photo.path) as image:
            assert (image.size, image.mode) == (photo.size, photo.mode)
            assert image.format == ("PNG" if photo.path.lower().endswith(".png") else "JPEG")
    assert {p.size for p in photos} == set(sample_photos.SIZES)
    assert {p.mode for p in photos} == {"RGB", "L", "RGBA"}
    assert {os.path.splitext(p.path)[1] for p in photos} == set(sample_photos.EXTENSIONS), "upper case too"
    assert {p.path.count("/") for p in photos} == {1, 2, 3}, "files one, two and three folders down"
    for label in {p.label for p in photos}:
        assert " " in label and not label.isascii()
        assert all(p.path.startswith(f"{label}/") for p in photos if p.label == label)
    with pytest.raises(FileExistsError, match="not empty"):
        sample_photos.write_photo_tree(str(tmp_path))


def test_photo_box_is_the_shape_in_the_photos_pixels():
    rng = np.random.default_rng(4)
    for i, size in enumerate(sample_photos.SIZES * 3):
        index = i % 5
        image, (x0, y0, x1, y1) = sample_photos.render_photo(index, rng, size)
        assert image.size == size and 0 <= x0 <= x1 < size[0] and 0 <= y0 <= y1 < size[1]
        pixels = np.asarray(image, dtype=np.float32)
        colour = np.array(sample.COLOURS[sample.class_style(index)[1]], dtype=np.float32)
        ys, xs = np.nonzero(np.abs(pixels - colour).sum(-1) < 30)
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        assert inside.mean() > 0.95, "the class colour lives inside the recorded box"


def test_manifests_list_every_photo_once_with_both_split_vocabularies(tmp_path):
    photos, rows = sample_photos.write_sample_photos(str(tmp_path), manifest=True)
    assert sorted(os.listdir(tmp_path)) == sorted([sample_photos.TREE, *sample_photos.MANIFESTS])
    for name in sample_photos.MANIFESTS:
        parsed = manifest.parse((tmp_path / name).read_text(encoding="utf-8"), name)
        assert parsed.rejected == [] and parsed.count == len(photos)
        assert [(r.path, r.label, r.word, r.box) for r in parsed.rows] == [
            (row["path"], row["label"], row["split"], row["box"]) for row in rows
        ]
    assert {r["split"] for r in rows} == {"", *sample_photos.SPLIT_WORDS}
    assert 0 < sum(r["box"] is not None for r in rows) < len(rows)
    for photo, row in zip(photos, rows, strict=True):
        assert (tmp_path / row["path"]).is_file() and row["path"].endswith(photo.path)


def test_photos_cli_documents_and_writes_the_manifests(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        sample_photos.main(["--help"])
    assert stopped.value.code == 0
    assert "--manifest" in capsys.readouterr().out
    args = ["--out", str(tmp_path), "--classes", "2", "--per-class", "3", "--manifest"]
    assert sample_photos.main(args) == 0
    assert len(list((tmp_path / sample_photos.TREE).glob("**/img_*"))) == 6
    assert (tmp_path / "manifest.csv").read_text().startswith("path,label,split,xmin,ymin,xmax,ymax\n")
    assert sample_photos.main(args) == 2 and "not empty" in capsys.readouterr().err
