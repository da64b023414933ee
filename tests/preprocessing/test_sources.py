"""Listing, splits and shards (preprocessing.sources), image validation
(preprocessing.images) and raw-dir resolution (preprocessing.fetch)."""

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from preprocessing import fetch, images, publish, sources


def _jpeg(mode="RGB", size=(64, 64), fmt="JPEG"):
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_class_table_sorted_and_named():
    words = sources.parse_words("n2\tsecond\nn1\tfirst, one\nn9\tunused\n", ["n2", "n1"])
    assert words == {"n1": "first, one", "n2": "second"}
    table = sources.ClassTable(sources.parse_wnids("n2\n\nn1\n"), words)
    assert table.to_metadata() == [
        {"index": 0, "wnid": "n1", "name": "first, one"},
        {"index": 1, "wnid": "n2", "name": "second"},
    ]
    with pytest.raises(sources.LayoutError, match="no classes"):
        sources.ClassTable([], {})


def test_parsers_and_malformed_rows():
    assert sources.parse_boxes("a.JPEG\t1\t2\t3\t4\n\n") == ({"a.JPEG": (1, 2, 3, 4)}, {})
    rows = sources.parse_val_annotations("v_0.JPEG\tn1\t0\t1\t2\t3\r\n\nv_0.JPEG\tn1\t0\t1\t2\t3\n")
    assert rows == ({"v_0.JPEG": ("n1", (0, 1, 2, 3))}, {}), "an identical repeat is harmless"
    with pytest.raises(sources.LayoutError, match=r"val_annotations.txt line 2: expected 6"):
        sources.parse_val_annotations("\nv_0.JPEG\tn1\t0\t1\n")
    malformed = {
        "a.JPEG\t1\tx\t3\t4": "not four non-negative integers",
        "a.JPEG\t1\t-2\t3\t4": "not four non-negative integers",
        "a.JPEG\t1\t\u00b2\t3\t4": "not four non-negative integers",
        "a.JPEG\t1\t2\t3": "not four non-negative integers",
        "a.JPEG\t1\t2\t3\t99999999999": "larger than",
        " \t1\t2\t3\t4": "empty file name",
    }
    for row, reason in malformed.items():
        with pytest.raises(sources.LayoutError, match=f"n1_boxes.txt line 3: .*{reason}"):
            sources.parse_boxes(f"ok.JPEG\t1\t2\t3\t4\n\n{row}\n", "n1_boxes.txt")


def test_conflicting_rows_reject_the_image_whatever_their_order():
    text = "a.JPEG\tn1\t0\t0\t9\t9\nb.JPEG\tn1\t0\t0\t9\t9\na.JPEG\tn2\t0\t0\t9\t9\na.JPEG\tn1\t0\t0\t9\t9\n"
    rows, conflicts = sources.parse_val_annotations(text)
    assert rows == {"b.JPEG": ("n1", (0, 0, 9, 9))}
    assert list(conflicts) == ["a.JPEG"] and "lines 1 and 3 disagree" in conflicts["a.JPEG"]
    assert "'n1'" in conflicts["a.JPEG"] and "'n2'" in conflicts["a.JPEG"]
    table = sources.ClassTable(["n1", "n2"], {})
    items, rejected = sources.val_items(table, ["a.JPEG", "b.JPEG"], (rows, conflicts))
    assert [i.path for i in items] == ["val/images/b.JPEG"]
    assert rejected == [sources.Rejected("val/images/a.JPEG", conflicts["a.JPEG"])]
    boxes = sources.parse_boxes("x.JPEG\t1\t1\t5\t5\nx.JPEG\t2\t2\t5\t5\n", "n1_boxes.txt")
    assert boxes.rows == {} and "n1_boxes.txt lines 1 and 2 disagree" in boxes.conflicts["x.JPEG"]


def test_wnids_and_words_refuse_rows_that_would_misname_a_class():
    assert sources.parse_wnids("n1\r\n\n  n2  \n") == ["n1", "n2"]
    for bad in ("../etc", "n1/images", "n 1", ".", "..", "n1\x00", "a\\b"):
        with pytest.raises(sources.LayoutError, match=r"wnids.txt line 2: .* is not a wnid"):
            sources.parse_wnids(f"n0\n{bad}\n")
    with pytest.raises(sources.LayoutError, match=r"words.txt line 2: expected 'wnid<TAB>name' for n1"):
        sources.parse_words("n0\tzero\nn1\n", ["n1"])
    with pytest.raises(sources.LayoutError, match=r"words.txt line 3: a second, different name for n1"):
        sources.parse_words("n1\tone\nn1\tone\nn1\tuno\n", ["n1"])
    assert sources.parse_words("n9 without a tab\nn1\tone\n", ["n1"]) == {"n1": "one"}, "other rows unread"


def test_valid_split_is_stratified_and_stable():
    names = [f"n1_{i}.JPEG" for i in range(500)]
    chosen = sources.valid_names(names, seed=42, fraction=0.1)
    assert len(chosen) == 50
    assert chosen == sources.valid_names(list(reversed(names)), seed=42, fraction=0.1)
    assert chosen != sources.valid_names(names, seed=7, fraction=0.1)
    assert sources.valid_names(names, seed=42, fraction=0.0) == set()
    table = sources.ClassTable(["n1"], {})
    split = sources.train_items(table, "n1", names, {"n1_3.JPEG": (1, 2, 3, 4)}, 42, 0.1)
    assert len(split["valid"]) == 50 and len(split["train"]) == 450
    by_name = {i.path.rsplit("/", 1)[-1]: i for i in split["train"] + split["valid"]}
    assert by_name["n1_3.JPEG"].box == (1, 2, 3, 4) and by_name["n1_4.JPEG"].box is None
    assert by_name["n1_3.JPEG"].path == "train/n1/images/n1_3.JPEG"


def test_val_items_reject_unknown_missing_and_unannotated():
    table = sources.ClassTable(["n1", "n2"], {})
    annotations = sources.Annotations(
        {
            "a.JPEG": ("n2", (0, 0, 5, 5)),
            "b.JPEG": ("n7", (0, 0, 5, 5)),
            "gone.JPEG": ("n1", (0, 0, 5, 5)),
        },
        {},
    )
    items, rejected = sources.val_items(table, ["a.JPEG", "b.JPEG", "extra.JPEG"], annotations)
    assert items == [sources.Item("val/images/a.JPEG", "val", 1, (0, 0, 5, 5))]
    assert sorted(rejected) == [
        ("val/images/b.JPEG", "unknown wnid n7 in val_annotations.txt"),
        ("val/images/extra.JPEG", "image has no row in val_annotations.txt"),
        ("val/images/gone.JPEG", "listed in val_annotations.txt but the file is missing"),
    ]


def test_shards_balanced_deterministic_and_complete():
    items = sources.unlabeled_items([f"t_{i}.JPEG" for i in range(10)])
    shards = sources.assign_shards(items, 4, seed=1)
    assert [len(s) for s in shards] == [3, 3, 2, 2]
    assert sorted(i for s in shards for i in s) == sorted(items)
    assert shards == sources.assign_shards(list(reversed(items)), 4, seed=1)
    assert [len(s) for s in sources.assign_shards(items[:1], 3, seed=1)] == [1, 0, 0]
    assert all(i.label == sources.NO_LABEL and i.box is None for i in items)


def test_validate_keeps_jpeg_bytes_and_accepts_gray_and_cmyk():
    for mode in ("RGB", "L", "CMYK"):
        data = _jpeg(mode)
        result = images.validate_image(data, 64)
        assert result.data == data and (result.height, result.width) == (64, 64)
        assert result.reencoded_from is None


def test_validate_reencodes_png_and_rejects_bad_files():
    png = _jpeg("RGBA", fmt="PNG")
    result = images.validate_image(png)
    assert result.reencoded_from == "PNG" and result.data.startswith(images.JPEG_SOI)
    assert Image.open(io.BytesIO(result.data)).mode == "RGB"
    good = _jpeg()
    cases = {
        b"": "empty file",
        b"hello, not an image\n": "not an image",
        good[: len(good) // 2]: "truncated or corrupt JPEG",
    }
    for data, reason in cases.items():
        with pytest.raises(images.BadImageError, match=reason):
            images.validate_image(data)
    # Another size is resized (contracts.resize), not rejected.
    resized = images.validate_image(_jpeg(size=(32, 48)), 64)
    assert (resized.height, resized.width, resized.reencoded_from) == (64, 64, "JPEG")
    # Bytes after the end marker are harmless: a full decode accepts the file as it is.
    padded = good + b"trailing"
    assert images.validate_image(padded).data == padded


def _zip(path, entries, links=()):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)


@pytest.mark.parametrize(
    ("entries", "links", "reason"),
    [
        ({"../evil.txt": "x"}, (), "outside the target"),
        ({"/etc/evil.txt": "x"}, (), "absolute path"),
        ({"ok/wnids.txt": "n1\n"}, [("ok/link", "/etc/passwd")], "symbolic link"),
    ],
)
def test_hostile_archives_refused_before_writing(tmp_path, entries, links, reason):
    archive = tmp_path / "evil.zip"
    _zip(archive, {"tiny/wnids.txt": "n1\n", **entries}, links)
    target = tmp_path / "out"
    with pytest.raises(fetch.SourceError, match=reason):
        fetch.safe_extract(str(archive), str(target))
    assert not target.exists(), "nothing is extracted from an unsafe archive"
    assert not (tmp_path / "evil.txt").exists()


def test_resolve_finds_root_in_folder_and_archive(tmp_path):
    root = tmp_path / "data" / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("n1\n")
    assert fetch.resolve_raw_dir(str(root), str(tmp_path)) == str(root)
    assert fetch.resolve_raw_dir(str(tmp_path / "data"), str(tmp_path)) == str(root)
    archive = tmp_path / "tiny.zip"
    _zip(archive, {"tiny-imagenet-200/wnids.txt": "n1\n"})
    work = tmp_path / "work"
    work.mkdir()
    found = fetch.resolve_raw_dir(str(archive), str(work))
    assert os.path.basename(found) == "tiny-imagenet-200" and found.startswith(str(work))
    with pytest.raises(fetch.SourceError, match=r"wnids\.txt not found"):
        fetch.resolve_raw_dir(str(work), str(tmp_path))
    with pytest.raises(fetch.SourceError, match="does not exist"):
        fetch.resolve_raw_dir(str(tmp_path / "nope"), str(tmp_path))
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(fetch.SourceError, match="not a readable zip"):
        fetch.resolve_raw_dir(str(tmp_path / "bad.zip"), str(work))


def test_output_dir_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    assert publish.prepare_output_dir(str(out), overwrite=False) == 0 and not out.exists()
    out.mkdir()
    for name in ("train-00000-of-00002.tfrecord", "metadata.json", "rejected.jsonl", "notes.txt"):
        (out / name).write_text("old")
    with pytest.raises(fetch.SourceError, match=r"not empty \(4 files\); pass --overwrite"):
        publish.prepare_output_dir(str(out), overwrite=False)
    assert publish.prepare_output_dir(str(out), overwrite=True) == 3
    assert sorted(os.listdir(out)) == ["notes.txt"], "only files of an earlier run are removed"


def test_output_dir_holding_only_a_failed_runs_rejects_is_free_for_its_retry(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / fetch.FAILED_REJECTS_FILE).write_text('{"path": "a.jpg", "reason": "x"}\n')
    assert publish.check_output_dir(str(out), overwrite=False) == [str(out / fetch.FAILED_REJECTS_FILE)]
    assert publish.prepare_output_dir(str(out), overwrite=False) == 1 and os.listdir(out) == []
    for leftover in (".incomplete-0123/train-00000-of-00001.tfrecord", f"sub/{fetch.FAILED_REJECTS_FILE}"):
        (out / leftover).parent.mkdir(parents=True, exist_ok=True)
        (out / leftover).write_text("x")
        (out / fetch.FAILED_REJECTS_FILE).write_text("x")
        with pytest.raises(fetch.SourceError, match="pass --overwrite"):
            publish.check_output_dir(str(out), overwrite=False)
        (out / leftover).unlink()


def test_manifest_sources_and_their_paths(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\n")
    assert fetch.fetch_raw_dir(str(tmp_path / "m.csv"), str(tmp_path)) == str(tmp_path / "m.csv")
    relative = os.path.relpath(tmp_path / "m.csv")
    assert fetch.fetch_raw_dir(relative, str(tmp_path)) == str(tmp_path / "m.csv"), "made absolute"
    with pytest.raises(fetch.SourceError, match="no such manifest file"):
        fetch.fetch_raw_dir(str(tmp_path / "gone.jsonl"), str(tmp_path))
    with pytest.raises(fetch.SourceError, match=r"must be a \.zip archive"):
        fetch.fetch_raw_dir("https://example.com/m.csv", str(tmp_path))
    assert fetch.resolve("/data", "a/b.jpg") == os.path.join("/data", "a/b.jpg")
    assert fetch.resolve("/data", "/abs/b.jpg") == "/abs/b.jpg"
    assert fetch.resolve("gs://bucket/lists", "gs://other/b.jpg") == "gs://other/b.jpg"
    assert fetch.resolve("gs://bucket/lists", "a/b.jpg") == "gs://bucket/lists/a/b.jpg"


@pytest.mark.parametrize("name", ["red fox", "Mañana café", "猫", "👩‍👩‍👧", " padded ", "n01443537"])
def test_class_names_are_kept_as_written(name):
    assert sources.check_class_name(name, "here") == name
    if " " in name:
        # Only tiny-imagenet's wnids must stay one plain folder name.
        with pytest.raises(sources.LayoutError, match="is not a wnid"):
            sources.check_wnid(name, "wnids.txt line 1")


@pytest.mark.parametrize(
    "name", ["", "   ", "\u3000", "tab\there", "new\nline", "bell\x07", "\udcff", "a\u2028b"]
)
def test_a_class_name_that_is_no_name_is_refused(name):
    with pytest.raises(sources.LayoutError, match=r"^here: class name .*(empty or only whitespace|control)"):
        sources.check_class_name(name, "here")
