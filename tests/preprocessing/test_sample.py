"""The sample generator writes the real tiny-imagenet-200 layout."""

import os

import numpy as np
import pytest
from PIL import Image

from preprocessing import sample


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


def test_cli_refuses_existing_dataset(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--classes", "2", "--train-per-class", "1", "--val-per-class", "1"]
    assert sample.main(args) == 0
    assert sample.main(args) == 2
    assert "already holds a dataset" in capsys.readouterr().err
