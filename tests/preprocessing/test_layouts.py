"""The layouts of --raw-dir, planned without Beam: detection, every input accounted, splits kept or carved.

The Beam job over the same sources is in test_layouts_job.py.
"""

import logging
import os
import shutil

import pytest

from preprocessing import layouts, plan, sample, sample_photos, sources

SHARDS = {"train": 2, "valid": 1, "test": 1, "unlabeled": 1}
SQUARE = ((64, 64),)


def _plan(source, layout="auto", valid_fraction=0.1, test_fraction=0.1, seed=42):
    return plan.plan_source(
        str(source),
        layout=layout,
        seed=seed,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        num_shards=SHARDS,
    )


def _items(job_plan):
    """{split: {path: item}} of a plan."""
    items = {}
    for split, _, _, shard_items in job_plan.shards:
        for item in shard_items:
            items.setdefault(split, {})[item.path] = item
    return items


def _tree(folder, **spec):
    return sample_photos.write_photo_tree(str(folder), sample_photos.PhotoSpec(sizes=SQUARE, **spec))


def test_auto_detects_each_layout_and_names_all_three_when_none_fits(tmp_path):
    sample.write_sample_dataset(str(tmp_path / "tiny"), sample.SampleSpec(classes=2, train_per_class=2))
    assert layouts.detect(str(tmp_path / "tiny"), "auto", "x") == (
        layouts.TINY_IMAGENET,
        str(tmp_path / "tiny"),
    )
    # A zip of a folder holds that folder (and a Mac's __MACOSX/ and .DS_Store): the tree is one level down.
    _tree(tmp_path / "zip" / "myphotos")
    (tmp_path / "zip" / "__MACOSX").mkdir()
    (tmp_path / "zip" / ".DS_Store").write_bytes(b"\0")
    assert layouts.detect(str(tmp_path / "zip"), "auto", "x") == (
        layouts.FOLDERS,
        str(tmp_path / "zip" / "myphotos"),
    )
    (tmp_path / "m.csv").write_text("path,label\n")
    assert layouts.detect(str(tmp_path / "m.CSV"), "auto", "x")[0] == layouts.MANIFEST
    assert layouts.detect(str(tmp_path / "tiny"), "folders", "x") == (layouts.FOLDERS, str(tmp_path / "tiny"))

    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.jpg").write_bytes(b"x")
    (loose / "empty").mkdir()
    with pytest.raises(sources.LayoutError) as refused:
        _plan(loose)
    message = str(refused.value)
    assert (
        "tiny-imagenet-200 (wnids.txt)" in message
        and "class-per-folder" in message
        and ".csv/.jsonl" in message
    )
    with pytest.raises(sources.LayoutError, match="needs a folder"):
        layouts.detect(str(tmp_path / "m.csv"), "folders", "m.csv")
    with pytest.raises(sources.LayoutError, match=r"needs a \.csv or \.jsonl file"):
        layouts.detect(str(loose), "manifest", "loose")


def test_a_tiny_imagenet_copy_without_wnids_is_still_that_layout(tmp_path):
    raw = tmp_path / "raw"
    sample.write_sample_dataset(str(raw), sample.SampleSpec(classes=2, train_per_class=2))
    os.remove(raw / "wnids.txt")
    with pytest.raises(Exception, match=r"wnids\.txt not found"):
        _plan(raw)


def test_every_file_below_the_tree_is_an_input_or_a_hidden_file(tmp_path):
    root = tmp_path / "photos"
    photos = _tree(root, classes=2, per_class=6)
    cat = root / photos[0].label
    (cat / "notes.txt").write_text("not an image")
    (cat / "deeper" / "still").mkdir(parents=True)
    (cat / "deeper" / "still" / "IMG_9.JPEG").write_bytes((root / photos[0].path).read_bytes())
    (root / "README.md").write_text("loose file at the top")
    for hidden in (
        ".DS_Store",
        f"{photos[0].label}/.DS_Store",
        "Thumbs.db",
        "__MACOSX/x/._img.jpg",
        ".git/x.jpg",
    ):
        os.makedirs(os.path.dirname(root / hidden), exist_ok=True)
        (root / hidden).write_bytes(b"\0")
    os.symlink(tmp_path / "outside.jpg", cat / "link.jpg")
    os.mkfifo(cat / "pipe.png")

    listing = layouts.list_folders(str(root))
    assert listing.skipped == 5
    expected = {p.path for p in photos} | {f"{photos[0].label}/deeper/still/IMG_9.JPEG"}
    assert {e.path for e in listing.entries} == expected, "any depth, any letter case"
    assert {e.path: e.label for e in listing.entries} == {p: p.split("/")[0] for p in expected}
    assert sorted((r.path, r.reason) for r in listing.rejected) == [
        ("README.md", layouts.NOT_IN_A_CLASS),
        (f"{photos[0].label}/link.jpg", "symbolic link that resolves outside the raw folder (not followed)"),
        (f"{photos[0].label}/notes.txt", layouts.NOT_AN_IMAGE),
        (f"{photos[0].label}/pipe.png", "not a regular file (device, FIFO or socket)"),
    ]
    assert listing.found == len(listing.entries) + len(listing.rejected) == 12 + 1 + 4

    job_plan = _plan(root)
    assert job_plan.layout == layouts.FOLDERS and job_plan.root == str(root)
    assert job_plan.found == 17 and sum(job_plan.planned.values()) + len(job_plan.rejected) == 17
    assert job_plan.describe_inputs() == "17 files; 5 hidden or system files skipped, not inputs"


def test_class_names_are_kept_as_written_and_non_names_refused(tmp_path):
    root = tmp_path / "photos"
    photos = _tree(root, classes=3, per_class=4)
    job_plan = _plan(root)
    names = sorted({p.label for p in photos})
    assert names == ["blue triangle n°2", "green circle n°1", "red square n°0"]
    assert job_plan.classes.to_metadata() == [{"index": i, "wnid": n, "name": n} for i, n in enumerate(names)]
    for item in (i for split in _items(job_plan).values() for i in split.values()):
        assert names[item.label] == item.path.split("/")[0]

    for bad, reason in (("   ", "empty or only whitespace"), ("bell\x07", "control characters")):
        tree = tmp_path / f"bad{len(bad)}"
        shutil.copytree(root, tree)
        (tree / bad).mkdir()
        (tree / bad / "a.jpg").write_bytes(b"x")
        with pytest.raises(sources.LayoutError, match=f"class folder .* in {tree}: class name .*{reason}"):
            _plan(tree)


def test_split_folders_are_kept_and_only_missing_splits_carved(tmp_path):
    root = tmp_path / "photos"
    photos = _tree(root, classes=3, per_class=12, split_folders=True)
    (root / "misc").mkdir()
    (root / "misc" / "x.jpg").write_bytes(b"x")
    job_plan = _plan(root)
    items = _items(job_plan)
    given = {split: {p.path for p in photos if p.split == split} for split in ("train", "valid", "test")}
    assert {split: set(items.get(split, {})) for split in given} == given, (
        "val/ and test/ kept; nothing carved"
    )
    assert {item.source_split for item in items["valid"].values()} == {"val"}
    assert [(r.path, r.reason) for r in job_plan.rejected] == [("misc/x.jpg", layouts.OUTSIDE_SPLITS)]

    shutil.rmtree(root / "val")
    os.rename(root / "test", root / "Validation")
    job_plan = _plan(root, valid_fraction=0.0, test_fraction=0.3)
    items = _items(job_plan)
    assert set(items["valid"]) == {p.replace("test/", "Validation/", 1) for p in given["test"]}
    assert set(items["test"]) <= given["train"] and set(items["train"]) == given["train"] - set(items["test"])
    assert {item.label for item in items["test"].values()} == {0, 1, 2}, "one per class at least"

    (root / "val" / "cat").mkdir(parents=True)
    (root / "val" / "cat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(sources.LayoutError, match=r"Validation/ and val/: which one is the valid split"):
        _plan(root)


def test_without_split_folders_valid_and_test_are_carved_per_class(tmp_path, caplog):
    root = tmp_path / "photos"
    photos = _tree(root, classes=3, per_class=8)
    (root / "tiny class").mkdir()
    (root / "tiny class" / "only.jpg").write_bytes((root / photos[0].path).read_bytes())
    with caplog.at_level(logging.WARNING, logger="preprocessing"):
        job_plan = _plan(root, valid_fraction=0.2, test_fraction=0.2, seed=3)
    items = _items(job_plan)
    for split in ("train", "valid", "test"):
        assert {item.label for item in items[split].values()} >= {0, 1, 2}, (
            f"every class of 8 has {split} images"
        )
    assert items["train"]["tiny class/only.jpg"].label == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["1 classes have fewer than 3 images to split and go to train only: 'tiny class'"]
    assert _items(_plan(root, valid_fraction=0.2, test_fraction=0.2, seed=3)) == items, "deterministic"
    assert _items(_plan(root, valid_fraction=0.2, test_fraction=0.2, seed=4)) != items, "seeded"


@pytest.mark.parametrize("split_folders", [False, True])
def test_no_test_split_with_a_zero_test_fraction_is_refused_before_any_image_is_read(tmp_path, split_folders):
    root = tmp_path / "photos"
    _tree(root, classes=2, per_class=6, split_folders=split_folders)
    if split_folders:
        shutil.rmtree(root / "test")
    with pytest.raises(
        sources.LayoutError, match=r"no test split .* --test-fraction is 0: pass --test-fraction"
    ):
        _plan(root, test_fraction=0.0)
    small = tmp_path / "small"
    _tree(small, classes=2, per_class=2)
    with pytest.raises(sources.LayoutError, match="no image would be in the test split"):
        _plan(small)


def _manifest_source(tmp_path, name="manifest.csv", absolute=False):
    photos, rows = sample_photos.write_sample_photos(str(tmp_path), sample_photos.PhotoSpec(sizes=SQUARE))
    rows = sample_photos.manifest_rows(photos, str(tmp_path / "photos"), str(tmp_path), absolute=absolute)
    return photos, rows


def test_manifest_splits_kept_exactly_missing_files_accounted(tmp_path):
    photos, rows = _manifest_source(tmp_path)
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    absolute = sample_photos.manifest_rows(photos, str(tmp_path / "photos"), str(elsewhere), absolute=True)
    extra = [
        {"path": "photos/gone.jpg", "label": photos[0].label, "split": "", "box": None},
        {"path": rows[1]["path"], "label": rows[1]["label"], "split": "", "box": None},  # Repeats row 3.
    ]
    for path, written in ((tmp_path / "m.csv", rows + extra), (elsewhere / "m.jsonl", absolute)):
        sample_photos.write_manifest(str(path), written)
        job_plan = _plan(path)
        assert job_plan.layout == layouts.MANIFEST and job_plan.root == str(path.parent)
        assert job_plan.found == len(written) and job_plan.missing == (1 if written is not absolute else 0)
        items = _items(job_plan)
        where = {p: split for split, split_items in items.items() for p in split_items}
        canonical = {
            "train": "train",
            "training": "train",
            "valid": "valid",
            "validation": "valid",
            "test": "test",
        }
        for row in written[: len(rows)]:
            if row["split"]:
                assert where[row["path"]] == canonical[row["split"].lower()], "a row's split is kept exactly"
            else:
                assert where[row["path"]] == "train", "the source gives all three splits: nothing carved"
            item = items[where[row["path"]]][row["path"]]
            assert (
                item.box == (tuple(row["box"]) if row["box"] else None) and item.source_split == row["split"]
            )
        assert sum(job_plan.planned.values()) + len(job_plan.rejected) == job_plan.found
    reasons = sorted(r.reason for r in _plan(tmp_path / "m.csv").rejected)
    assert reasons == ["m.csv line 38: the file is missing", "m.csv line 39: repeats line 3 (converted once)"]
    assert _plan(tmp_path / "m.csv").describe_inputs() == "38 manifest rows, 1 of them without a file"


def test_manifest_rows_without_a_split_are_carved_when_the_source_lacks_one(tmp_path):
    _, rows = _manifest_source(tmp_path)
    for row in rows:
        row["split"] = "TRAINING" if row["split"] else ""
    sample_photos.write_manifest(str(tmp_path / "m.jsonl"), rows)
    items = _items(_plan(tmp_path / "m.jsonl", valid_fraction=0.2, test_fraction=0.2))
    given = {row["path"] for row in rows if row["split"]}
    assert given <= set(items["train"]), "TRAINING rows stay in train"
    assert items["valid"] and items["test"] and not (set(items["valid"]) | set(items["test"])) & given
    with pytest.raises(sources.LayoutError, match="--test-fraction is 0"):
        _plan(tmp_path / "m.jsonl", test_fraction=0.0)
