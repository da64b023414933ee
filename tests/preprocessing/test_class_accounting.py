"""A class cannot vanish with exit 0 (issue 27, item 2).

Only the total reject share was checked: every train image of one class could
be rejected within ``--max-reject-fraction`` (a 500-image class is 0.5% of
tiny-imagenet's train images), and the job and the trainer both exited 0. Now
the job checks each class (``--min-train-per-class``, exit 2) and the trainer
refuses metadata with an empty train class.
"""

import json
import os

import pytest

from contracts import dataset, schema
from preprocessing import accounting, flags, layouts, plan, sample, task, transforms
from tests.preprocessing.test_full_decode import no_scan_data

SHARDS = ["--num-shards-train", "2", "--num-shards-valid", "1", "--num-shards-test", "1"]
SHARDS += ["--num-shards-unlabeled", "1"]
SPEC = sample.SampleSpec(classes=3, train_per_class=10, val_per_class=2, test_images=2, seed=5)


def _corrupt_class(raw, wnid):
    """Replaces every train image of ``wnid`` with its headers and end marker (no scan data)."""
    names = sorted(p.name for p in (raw / "train" / wnid / "images").iterdir())
    for name in names:
        path = raw / "train" / wnid / "images" / name
        path.write_bytes(no_scan_data(path.read_bytes()))
    return names


def _run(capsys, raw, out, *more):
    args = ["--raw-dir", str(raw), "--output-dir", str(out), *SHARDS, *more]
    code = task.run(args)
    return code, capsys.readouterr().err


def test_class_whose_train_images_are_all_rejected_fails_the_job(tmp_path, capsys):
    raw = tmp_path / "raw"
    info = sample.write_sample_dataset(str(raw), SPEC)
    wnid = info["wnids"][1]
    corrupted = _corrupt_class(raw, wnid)
    out = tmp_path / "out"
    # 10 of 38 inputs: within a 30% budget, which alone would have let the class vanish.
    code, err = _run(capsys, raw, out, "--max-reject-fraction", "0.3")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: 1 of 3 classes have fewer than 1 train images after the rejects")
    # 9 train + 1 valid image (--valid-fraction 0.1): the nine meant for train are counted as its rejects.
    name = sample.class_name(1)
    assert f"'{name}' ({wnid}) has 0, 9 rejected (9 truncated or corrupt JPEG)" in err, err
    kept = out / "rejected.failed.jsonl"
    assert f"see {kept}" in err and not (out / schema.METADATA_FILE).exists()
    dead = [json.loads(line)["path"] for line in kept.read_text().splitlines()]
    assert sorted(dead) == sorted(f"train/{wnid}/images/{n}" for n in corrupted)

    # With the check off the job writes the dataset, and the trainer's check refuses it.
    code, err = _run(capsys, raw, out, "--max-reject-fraction", "0.3", "--min-train-per-class", "0")
    assert code == 0, err
    data = dataset.load_metadata(str(out))
    assert data.class_counts("train")[1] == 0
    with pytest.raises(dataset.DataError, match=rf"1 of 3 classes have no train images .*'{name}'"):
        dataset.verify_data(data)
    dataset.verify_data(data, ["valid", "test"])  # Evaluating on such data stays possible.


def test_trainer_refuses_metadata_with_an_empty_class_in_one_line(tmp_path, capsys):
    from trainer import task as trainer_task

    raw = tmp_path / "raw"
    info = sample.write_sample_dataset(str(raw), SPEC)
    _corrupt_class(raw, info["wnids"][0])
    out = tmp_path / "out"
    code, err = _run(capsys, raw, out, "--max-reject-fraction", "0.3", "--min-train-per-class", "0")
    assert code == 0, err
    job = tmp_path / "job"
    code = trainer_task.main(["--data-dir", str(out), "--job-dir", str(job), "--epochs", "1"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    name = sample.class_name(0)
    assert f"1 of 3 classes have no train images (class_counts of train): '{name}'" in lines[0]


def test_min_train_per_class_names_short_classes_fewest_first(tmp_path):
    raw = tmp_path / "raw"
    info = sample.write_sample_dataset(str(raw), SPEC)
    os.mkfifo(raw / "train" / info["wnids"][0] / "images" / "fifo.JPEG")  # Rejected while listing.
    os.mkfifo(raw / "val" / "images" / "fifo.JPEG")  # A test input: not counted as train's.
    job_plan = plan.make_plan(str(raw), seed=42, valid_fraction=0.1, num_shards=dict(flags.DEFAULT_SHARDS))
    planned = [item for split, _, _, items in job_plan.shards if split == "train" for item in items]
    counts = [sum(item.label == label for item in planned) for label in range(3)]
    assert counts == [9, 9, 9]
    # Dead letters as the job writes them: the plan's own (build_pipeline), and two of class 2's
    # train images rejected while converting (the DoFn's).
    lost = [item.path for item in planned if item.label == 2][:2]
    lines = [transforms.rejected_line(path, "truncated or corrupt JPEG: bad Huffman code") for path in lost]
    lines += [transforms.rejected_line(r.path, r.reason) for r in job_plan.rejected]
    fifo = "not a regular file (device, FIFO or socket)"
    assert [json.loads(line)["reason"] for line in lines[2:]] == [fifo, fifo]
    dead = [json.loads(line) for line in lines]
    assert accounting.short_classes(job_plan, [9, 9, 7], dead, 7) is None
    message = accounting.short_classes(job_plan, [9, 9, 7], dead, 9)
    names = [sample.class_name(i) for i in range(3)]
    assert message == (
        "1 of 3 classes have fewer than 9 train images after the rejects (--min-train-per-class 9): "
        f"'{names[2]}' ({info['wnids'][2]}) has 7, 2 rejected (2 truncated or corrupt JPEG)"
    )
    message = accounting.short_classes(job_plan, [9, 10, 7], dead, 11)
    assert message.startswith("3 of 3 classes have fewer than 11 train images")
    parts = message.split(": ", 1)[1].split("; ")
    assert parts == [
        f"'{names[2]}' ({info['wnids'][2]}) has 7, 2 rejected (2 truncated or corrupt JPEG)",
        f"'{names[0]}' ({info['wnids'][0]}) has 9, 1 rejected (1 {fifo})",
        f"'{names[1]}' ({info['wnids'][1]}) has 10, none rejected",
    ]
    assert accounting.short_classes(job_plan, [0, 0, 0], dead, 0) is None, "0 turns the check off"


def test_many_short_classes_and_reasons_are_counted_not_listed(tmp_path):
    spec = sample.SampleSpec(classes=12, train_per_class=2, val_per_class=1, test_images=1, seed=6)
    raw = tmp_path / "raw"
    sample.write_sample_dataset(str(raw), spec)
    job_plan = plan.make_plan(str(raw), seed=42, valid_fraction=0.0, num_shards=dict(flags.DEFAULT_SHARDS))
    train = [item for split, _, _, items in job_plan.shards if split == "train" for item in items]
    first = [item.path for item in train if item.label == 0]
    reasons = ["empty file", "not an image (unrecognised format)", "truncated or corrupt JPEG: x", "x" * 120]
    dead = [json.loads(transforms.rejected_line(first[i % 2], r)) for i, r in enumerate(reasons)]
    message = accounting.short_classes(job_plan, [0] * 12, dead, 1)
    assert message.endswith("; and 2 more")
    assert message.count(" has 0") == 10
    assert ", 1 for other reasons)" in message and "x" * 120 not in message


def _manifest_corpus(tmp_path):
    """Sample photos in a CSV manifest: 'cat' and 'fox' readable, every 'dog' row's file missing."""
    raw = tmp_path / "raw"
    info = sample.write_sample_dataset(str(raw), SPEC)
    rows = ["path,label,split"]
    for index, label in ((0, "cat"), (1, "fox")):
        folder = f"raw/train/{info['wnids'][index]}/images"
        rows += [f"{folder}/{name},{label}," for name in sorted(os.listdir(tmp_path / folder))]
    rows += [f"gone/dog_{k}.jpg,dog," for k in range(3)]
    rows += ["gone/dog_test.jpg,dog,test"]  # A test row: missing too, but not one of its train images.
    path = tmp_path / "photos.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_manifest_class_whose_files_are_all_missing_is_named_not_dropped(tmp_path, capsys):
    manifest = _manifest_corpus(tmp_path)
    code, err = _run(capsys, manifest, tmp_path / "out", "--max-reject-fraction", "0.2")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(
        "error: 1 of 3 classes have fewer than 1 train images after the rejects (--min-train-per-class 1): "
        "'dog' has 0, 3 rejected (3 the file is missing); see "
    ), err


def test_folder_class_whose_files_are_all_unreadable_stays_in_the_class_table(tmp_path):
    raw = tmp_path / "raw"
    info = sample.write_sample_dataset(str(raw), SPEC)
    tree = tmp_path / "tree"
    for index, label in ((0, "cat"), (1, "fox")):
        (tree / label).mkdir(parents=True)
        for name in os.listdir(raw / "train" / info["wnids"][index] / "images"):
            os.link(raw / "train" / info["wnids"][index] / "images" / name, tree / label / name)
    (tree / "dog").mkdir()
    os.mkfifo(tree / "dog" / "a.jpg")
    os.symlink("/etc/hostname", tree / "dog" / "b.jpg")
    (tree / "dog" / "notes.txt").write_text("not an image, so no sign of a class\n")
    (tree / "bad\x7fname").mkdir()
    os.mkfifo(tree / "bad\x7fname" / "c.jpg")  # No class name: rejected, and no class.
    listing = layouts.list_folders(str(tree))
    assert listing.rejected_labels == {"dog/a.jpg": ("dog", None), "dog/b.jpg": ("dog", None)}
    job_plan = plan.plan_source(
        str(tree),
        layout="auto",
        seed=1,
        valid_fraction=0.1,
        test_fraction=0.1,
        num_shards=dict(flags.DEFAULT_SHARDS),
    )
    assert job_plan.classes.wnids == ["cat", "dog", "fox"]
    assert job_plan.rejected_classes == {"dog/a.jpg": 1, "dog/b.jpg": 1}
    dead = [json.loads(transforms.rejected_line(r.path, r.reason)) for r in job_plan.rejected]
    counts = [
        sum(i.label == c for s, _, _, items in job_plan.shards if s == "train" for i in items)
        for c in range(3)
    ]
    message = accounting.short_classes(job_plan, counts, dead, 1)
    assert message.endswith(
        "'dog' has 0, 2 rejected (1 not a regular file (device, FIFO or socket), "
        "1 symbolic link that resolves outside the raw folder (not followed))"
    ), message


@pytest.mark.parametrize("value", ["-1", "two"])
def test_min_train_per_class_must_be_a_count(value, capsys):
    args = ["--raw-dir", "r", "--output-dir", "o", "--min-train-per-class", value]
    if value == "-1":
        with pytest.raises(ValueError, match="--min-train-per-class must be >= 0, got -1"):
            flags.parse_args(args)
    else:
        with pytest.raises(SystemExit):
            flags.parse_args(args)
        assert "--min-train-per-class: invalid int value: 'two'" in capsys.readouterr().err
    assert flags.parse_args(args[:4])[0].min_train_per_class == 1
