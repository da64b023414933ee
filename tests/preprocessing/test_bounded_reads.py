"""The dataset's text files are read with a bound and never block (issue 27, item 9, text half).

``wnids.txt`` or ``val_annotations.txt`` linked to ``/dev/zero`` filled 4 GB
in 8 s; as a FIFO the job hung. Every text input (``wnids.txt``,
``words.txt``, ``val_annotations.txt``, ``<wnid>_boxes.txt``, manifests) is now
refused unread when it is not a regular file or is over
:data:`preprocessing.textfiles.MAX_TEXT_BYTES`. Each read runs in a thread with
a deadline, so a regression fails the test instead of hanging it.
"""

import os
import threading

import pytest

from contracts import storage
from preprocessing import fetch, flags, layouts, plan, sample, task, textfiles

DEADLINE_S = 30
SPEC = sample.SampleSpec(classes=2, train_per_class=4, val_per_class=1, test_images=1, seed=2)


def _within_deadline(function, *args):
    """Returns what ``function(*args)`` returned or raised, failing the test if it blocks."""
    outcome = {}

    def call():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # Handed to the test, which checks it.
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"{function.__name__}{args} blocked for {DEADLINE_S} s"
    return outcome


def _replace(path, kind):
    """Puts a FIFO, a link to /dev/zero, a folder or a file over the bound where ``path`` was."""
    if path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", path)
    elif kind == "folder":
        path.mkdir()
    else:
        with open(path, "wb") as f:
            f.truncate(textfiles.MAX_TEXT_BYTES + 1)  # Sparse: no disk space used.


EXPECTED = {
    "fifo": textfiles.NOT_A_REGULAR_FILE,
    "dev_zero": textfiles.NOT_A_REGULAR_FILE,
    "folder": textfiles.NOT_A_REGULAR_FILE,
    "oversized": f"{textfiles.MAX_TEXT_BYTES + 1} bytes, over the limit of {textfiles.MAX_TEXT_BYTES} bytes "
    "for a text input",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_text_input_that_is_no_regular_file_or_too_large_is_refused_unread(tmp_path, kind):
    path = tmp_path / "wnids.txt"
    _replace(path, kind)
    outcome = _within_deadline(textfiles.read_text_input, str(path))
    assert isinstance(outcome.get("error"), fetch.SourceError), outcome
    assert str(outcome["error"]) == f"{path}: {EXPECTED[kind]}"


def test_text_input_within_the_bound_is_read(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("n01\tgoldfish\n")
    assert textfiles.read_text_input(str(path)) == "n01\tgoldfish\n"
    os.symlink(path, tmp_path / "link.txt")  # A link to a regular file is read like the file.
    assert textfiles.read_text_input(str(tmp_path / "link.txt")) == "n01\tgoldfish\n"
    assert textfiles.read_text_input(str(path), limit=13) == "n01\tgoldfish\n"
    with pytest.raises(fetch.SourceError, match="13 bytes, over the limit of 12 bytes"):
        textfiles.read_text_input(str(path), limit=12)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(fetch.SourceError, match="is not UTF-8 text"):
        textfiles.read_text_input(str(path))


def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(tmp_path, monkeypatch):
    path = tmp_path / "val_annotations.txt"
    path.write_text("a\n")
    real = textfiles.check_text_input

    def check_then_swap(*args):
        real(*args)
        _replace(path, "fifo")  # The race the open descriptor's check closes.

    monkeypatch.setattr(textfiles, "check_text_input", check_then_swap)
    outcome = _within_deadline(textfiles.read_text_input, str(path))
    assert str(outcome.get("error")) == f"{path}: {textfiles.NOT_A_REGULAR_FILE}", outcome


# The dataset's text files: (file below the root, kind) as the planner reads them.
TEXT_FILES = [
    ("wnids.txt", "dev_zero"),
    ("words.txt", "fifo"),
    ("val/val_annotations.txt", "fifo"),
    ("val/val_annotations.txt", "dev_zero"),
    ("train/{wnid}/{wnid}_boxes.txt", "fifo"),
    ("train/{wnid}/{wnid}_boxes.txt", "oversized"),
]


@pytest.mark.parametrize(("relative", "kind"), TEXT_FILES)
def test_planning_refuses_each_text_file_of_the_layout(tmp_path, relative, kind):
    raw = tmp_path / "raw"
    info = sample.write_sample_dataset(str(raw), SPEC)
    path = raw / relative.format(wnid=info["wnids"][0])
    _replace(path, kind)
    shards = dict(flags.DEFAULT_SHARDS)

    def make_plan():
        return plan.make_plan(str(raw), seed=1, valid_fraction=0.1, num_shards=shards)

    outcome = _within_deadline(make_plan)
    assert str(outcome.get("error")) == f"{path}: {EXPECTED[kind]}", outcome


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_manifest_that_is_no_regular_file_or_too_large_is_refused_unread(tmp_path, kind):
    path = tmp_path / "photos.jsonl"
    _replace(path, kind)
    outcome = _within_deadline(fetch.fetch_raw_dir, str(path), str(tmp_path))
    assert str(outcome.get("error")) == f"{path}: {EXPECTED[kind]}", outcome
    # The listing reads it through the same bound (it may have changed since the job started).
    outcome = _within_deadline(layouts.list_manifest, str(path))
    assert str(outcome.get("error")) == f"{path}: {EXPECTED[kind]}", outcome


@pytest.mark.parametrize(("relative", "kind"), TEXT_FILES[:1] + TEXT_FILES[2:3])
def test_the_job_refuses_a_blocking_text_file_in_one_line(tmp_path, capsys, relative, kind):
    raw = tmp_path / "raw"
    sample.write_sample_dataset(str(raw), SPEC)
    _replace(raw / relative, kind)
    out = tmp_path / "out"
    outcome = _within_deadline(task.run, ["--raw-dir", str(raw), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert outcome.get("value") == 2 and err == f"error: {raw / relative}: {textfiles.NOT_A_REGULAR_FILE}\n"
    assert not out.exists()


def test_gcs_text_input_is_bounded_by_the_object_size(gcs_bucket):
    folder = f"gs://{gcs_bucket}/raw"
    storage.write_bytes(f"{folder}/wnids.txt", b"n01\nn02\n")
    storage.write_bytes(f"{folder}/empty.txt", b"")
    assert textfiles.read_text_input(f"{folder}/wnids.txt") == "n01\nn02\n"
    assert textfiles.read_text_input(f"{folder}/empty.txt") == ""
    with pytest.raises(fetch.SourceError, match=r"wnids.txt: 8 bytes, over the limit of 7 bytes"):
        textfiles.read_text_input(f"{folder}/wnids.txt", limit=7)
    with pytest.raises(FileNotFoundError, match="no such object"):
        textfiles.read_text_input(f"{folder}/gone.txt")
