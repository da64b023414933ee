"""The whole Beam job (python -m preprocessing.task) on generated datasets."""

import functools
import http.server
import io
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import schema, voice
from preprocessing import fetch, flags, sample, task, transforms
from tests import datasets, streams

REPO = pathlib.Path(__file__).resolve().parents[2]

# metadata.json as docs/design.md section 1 lists it.
METADATA_KEYS = {
    "schema_version",
    "source",
    "seed",
    "valid_fraction",
    "image_size",
    "classes",
    "splits",
    "rejected",
    "inputs",
    "layout",
    "resize",
    "source_sizes",
}
SHARDS = [
    "--num-shards-train",
    "3",
    "--num-shards-valid",
    "2",
    "--num-shards-test",
    "2",
    "--num-shards-unlabeled",
    "2",
]


def _run(capsys, *args):
    code = task.run([str(a) for a in args])
    return code, capsys.readouterr().err


def _records(out_dir, metadata):
    """Reads every shard listed in metadata.json: {split: {file name: record}}."""
    records = {}
    for split, info in metadata["splits"].items():
        records[split] = {}
        for shard in info["shards"]:
            for raw in tf.data.TFRecordDataset(os.path.join(out_dir, shard)).as_numpy_iterator():
                record = schema.decode_example(raw)
                assert record["filename"] not in records[split], "every image exactly once"
                records[split][record["filename"]] = record
    return records


def _metadata(out_dir):
    with open(os.path.join(out_dir, schema.METADATA_FILE)) as f:
        return schema.read_metadata_text(f.read())


def _image(mode="RGB", fmt="JPEG", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def converted(sample_raw, tmp_path_factory):
    """The job's output for the shared sample dataset (run once per module)."""
    out = str(tmp_path_factory.mktemp("job") / "data")
    assert task.run(["--raw-dir", sample_raw[0], "--output-dir", out, "--seed", "7", *SHARDS]) == 0
    return out


def test_every_image_once_with_labels_boxes_and_bytes(sample_raw, converted):
    raw, info = sample_raw
    metadata = _metadata(converted)
    records = _records(converted, metadata)
    classes = datasets.read_classes(raw)
    assert metadata["classes"] == classes
    index = {c["wnid"]: c["index"] for c in classes}
    names = {c["wnid"]: c["name"] for c in classes}
    assert set(metadata) == METADATA_KEYS
    assert set(metadata["splits"]) == {"train", "valid", "test", "unlabeled"}
    assert set(metadata["splits"]["unlabeled"]) == {"count", "shards", "boxes"}
    labelled = ("train", "valid", "test")
    assert all(set(metadata["splits"][s]) == {"count", "shards", "boxes", "class_counts"} for s in labelled)
    assert metadata["layout"] == "tiny-imagenet" and metadata["resize"] == {"policy": "crop", "size": 64}
    assert metadata["source_sizes"] == {"64x64": sum(len(r) for r in records.values())}
    for split in labelled:
        labels = [r["label"] for r in records[split].values()]
        assert metadata["splits"][split]["class_counts"] == [labels.count(i) for i in range(len(classes))]
    for split, entry in metadata["splits"].items():
        assert entry["boxes"] == sum(r["box"] is not None for r in records[split].values())
    assert metadata["schema_version"] == schema.SCHEMA_VERSION
    assert metadata["seed"] == 7 and metadata["valid_fraction"] == 0.1 and metadata["image_size"] == [64, 64]
    assert metadata["rejected"] == {"count": 0, "file": schema.REJECTED_FILE}
    assert metadata["source"] == raw
    for split, info_split in metadata["splits"].items():
        assert info_split["count"] == len(records[split])
    shards = [s for i in metadata["splits"].values() for s in i["shards"]]
    assert sorted(os.listdir(converted)) == sorted([*shards, schema.METADATA_FILE, schema.REJECTED_FILE])
    assert len(metadata["splits"]["train"]["shards"]) == 3 and metadata["splits"]["train"]["shards"][0] == (
        "train-00000-of-00003.tfrecord"
    )
    train_like = {**records["train"], **records["valid"]}
    assert sorted(train_like) == sorted(info["train_boxes"])
    for name, record in train_like.items():
        wnid = name.split("_")[0]
        assert (record["label"], record["wnid"], record["class_name"]) == (index[wnid], wnid, names[wnid])
        assert record["box"] == info["train_boxes"][name] and record["source_split"] == "train"
        with open(os.path.join(raw, "train", wnid, "images", name), "rb") as f:
            assert record["image"] == f.read(), "JPEG bytes are stored unchanged"
        assert (record["height"], record["width"]) == (64, 64)
    for wnid in info["wnids"]:
        assert sum(r["wnid"] == wnid for r in records["valid"].values()) == 4, "10% of each class's 40"
    assert sorted(records["test"]) == sorted(info["val"])
    for name, record in records["test"].items():
        wnid, box = info["val"][name]
        assert (record["wnid"], record["label"], record["box"]) == (wnid, index[wnid], box)
        assert record["source_split"] == "val"
    assert sorted(records["unlabeled"]) == sorted(info["test"])
    assert all(r["label"] == schema.NO_LABEL and r["box"] is None for r in records["unlabeled"].values())


def _shard_contents(out_dir):
    """{shard name: [decoded record, in file order]}.

    Compared decoded: protobuf may order the Example's feature map differently
    in another process, so equal records need not be equal bytes.
    """
    contents = {}
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(schema.SHARD_SUFFIX):
            dataset = tf.data.TFRecordDataset(os.path.join(out_dir, name))
            contents[name] = [schema.decode_example(r) for r in dataset.as_numpy_iterator()]
    return contents


def test_deterministic_across_runs_and_worker_counts(sample_raw, converted, tmp_path, capsys):
    again = tmp_path / "again"
    multi = tmp_path / "multi"
    common = ["--raw-dir", sample_raw[0], "--seed", 7, *SHARDS]
    assert _run(capsys, *common, "--output-dir", again, "--direct_num_workers", 1)[0] == 0
    code, err = _run(
        capsys,
        *common,
        "--output-dir",
        multi,
        "--direct_num_workers",
        2,
        "--direct_running_mode",
        "multi_processing",
    )
    assert code == 0, err
    reference = _shard_contents(converted)
    assert _shard_contents(str(again)) == reference
    assert _shard_contents(str(multi)) == reference
    assert _metadata(str(multi)) == _metadata(converted)


def _bad_corpus(root):
    spec = sample.SampleSpec(classes=2, train_per_class=10, val_per_class=2, test_images=2, seed=3)
    info = sample.write_sample_dataset(str(root), spec)
    wnid = info["wnids"][0]
    images = root / "train" / wnid / "images"
    good = (images / f"{wnid}_0.JPEG").read_bytes()
    (images / "zero.JPEG").write_bytes(b"")
    (images / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (images / "text.JPEG").write_text("this is not a picture\n")
    (images / "png.JPEG").write_bytes(_image(fmt="PNG", seed=5))
    (images / "cmyk.JPEG").write_bytes(_image(mode="CMYK", seed=6))
    (root / "val" / "images" / "stranger.JPEG").write_bytes(_image(seed=7))
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("stranger.JPEG\tn99999999\t0\t0\t10\t10\n")
    return info


def test_bad_inputs_go_to_dead_letters(tmp_path, capsys):
    _bad_corpus(tmp_path / "raw")
    out = tmp_path / "out"
    code, err = _run(capsys, "--raw-dir", tmp_path / "raw", "--output-dir", out, *SHARDS)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "4 of 32 inputs rejected" in err and "--max-reject-fraction" in err
    assert not (out / schema.METADATA_FILE).exists(), "no metadata.json for a failed job"

    code, err = _run(
        capsys,
        "--raw-dir",
        tmp_path / "raw",
        "--output-dir",
        out,
        "--overwrite",
        "--max-reject-fraction",
        0.2,
        *SHARDS,
    )
    assert code == 0, err
    rejected = [json.loads(line) for line in (out / schema.REJECTED_FILE).read_text().splitlines()]
    wnid = sample.class_wnid(0)
    assert [(r["path"], r["reason"].split(":")[0]) for r in rejected] == [
        (f"train/{wnid}/images/text.JPEG", "not an image (unrecognised format)"),
        (f"train/{wnid}/images/truncated.JPEG", "truncated or corrupt JPEG"),
        (f"train/{wnid}/images/zero.JPEG", "empty file"),
        ("val/images/stranger.JPEG", "unknown wnid n99999999 in val_annotations.txt"),
    ]
    metadata = _metadata(str(out))
    assert metadata["rejected"]["count"] == 4
    records = _records(str(out), metadata)
    accepted = {**records["train"], **records["valid"]}
    assert "cmyk.JPEG" in accepted and accepted["cmyk.JPEG"]["image"] == _image(mode="CMYK", seed=6)
    png = accepted["png.JPEG"]
    assert png["image"].startswith(b"\xff\xd8") and png["label"] == 0
    for record in accepted.values():
        assert tf.io.decode_jpeg(record["image"], channels=3).shape == (64, 64, 3)
    assert sum(len(r) for r in records.values()) == 32 - 4


def _zip_folder(folder, archive):
    with zipfile.ZipFile(archive, "w") as zf:
        for directory, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(directory, name)
                zf.write(path, os.path.join("tiny-imagenet-200", os.path.relpath(path, folder)))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_zip_input_local_and_over_http(sample_raw, converted, tmp_path, capsys):
    archive = tmp_path / "tiny-imagenet-200.zip"
    _zip_folder(sample_raw[0], archive)
    out = tmp_path / "from-zip"
    assert _run(capsys, "--raw-dir", archive, "--output-dir", out, "--seed", 7, *SHARDS)[0] == 0
    assert _shard_contents(str(out)) == _shard_contents(converted)

    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        web_out = tmp_path / "from-http"
        code, err = _run(capsys, "--raw-dir", url, "--output-dir", web_out, "--seed", 7, *SHARDS)
        assert code == 0, err
        missing = url.replace(archive.name, "missing.zip")
        code, err = _run(capsys, "--raw-dir", missing, "--output-dir", tmp_path / "nothing")
        assert code == 2 and "cannot download" in err and len(err.strip().splitlines()) == 1
    finally:
        server.shutdown()
    assert _shard_contents(str(web_out)) == _shard_contents(converted)
    assert _metadata(str(web_out))["source"] == url


def test_hostile_zip_refused(tmp_path, capsys):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n1\n")
        zf.writestr("../evil.txt", "owned")
    code, err = _run(capsys, "--raw-dir", archive, "--output-dir", tmp_path / "out")
    assert (
        code == 2
        and err.strip()
        == "error: unsafe archive: entry '../evil.txt' would be written outside the target folder"
    )
    assert "Traceback" not in err and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("missing", ["wnids.txt", "val/val_annotations.txt"])
def test_missing_required_file_is_a_clear_error(sample_raw, tmp_path, capsys, missing):
    raw = tmp_path / "raw"
    shutil.copytree(sample_raw[0], raw)
    os.remove(raw / missing)
    code, err = _run(capsys, "--raw-dir", raw, "--output-dir", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    expected = "wnids.txt not found" if missing == "wnids.txt" else "val/val_annotations.txt is missing"
    assert expected in err


def test_text_file_that_is_not_utf8_is_a_clear_error(sample_raw, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(sample_raw[0], raw)
    (raw / "words.txt").write_bytes(b"n01443537\tgoldfish \xff\xfe\n")
    code, err = _run(capsys, "--raw-dir", raw, "--output-dir", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{raw / 'words.txt'} is not UTF-8 text" in err


def test_non_empty_output_refused_and_overwrite_removes_stale_shards(sample_raw, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "train-00007-of-00009.tfrecord"
    stale.write_bytes(b"old")
    (out / schema.METADATA_FILE).write_text("{}")
    args = ["--raw-dir", sample_raw[0], "--output-dir", out, *SHARDS]
    code, err = _run(capsys, *args)
    assert code == 2 and err.strip().startswith("error: --output-dir") and "--overwrite" in err
    assert stale.exists()
    with caplog.at_level(logging.INFO, logger="preprocessing"):
        code, err = _run(capsys, *args, "--overwrite")
    assert code == 0, err
    for stage in ("stage 1/4", "stage 2/4", "stage 3/4", "stage 4/4", "removed 2 files of an earlier run"):
        assert stage in caplog.text
    assert "written: train=" in caplog.text and "rejected=0" in caplog.text
    assert not stale.exists()
    listed = {s for info in _metadata(str(out))["splits"].values() for s in info["shards"]}
    assert {p.name for p in out.glob("*.tfrecord")} == listed


@pytest.mark.parametrize("terminal", [True, False])
def test_shards_are_one_bar_on_a_terminal_and_one_line_each_elsewhere(
    sample_raw, tmp_path, monkeypatch, terminal
):
    stream = streams.Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logger = logging.getLogger("preprocessing")
    handler, level = voice.Handler("preprocessing"), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert task.run(["--raw-dir", sample_raw[0], "--output-dir", str(tmp_path / "out"), *SHARDS]) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = stream.getvalue()
    splits = _metadata(str(tmp_path / "out"))["splits"]
    shards, images = sum(len(s["shards"]) for s in splits.values()), sum(s["count"] for s in splits.values())
    written = re.findall(r"shard (\S+) written: (\d+) images, 0 rejected", text)
    if not terminal:
        assert "\r" not in text and len(written) == shards
        assert sum(int(count) for _, count in written) == images
        return
    # No shard line: one bar, redrawn once per shard, its last draw counting them all, then its newline.
    assert written == []
    bar_line = next(line for line in text.split("\n") if "\r" in line)
    draws = [draw.removesuffix("\x1b[K") for draw in bar_line.split("\r")[1:]]
    assert len(draws) == shards
    message = voice.LINE_PATTERN.fullmatch(draws[-1]).group(3)
    done = rf"\[#+\] {shards}/{shards} shards, [\d.]+ s; {images} images written, 0 rejected"
    assert re.fullmatch(done, message), message
    assert "stage 4/4" in text.split(bar_line)[1]


def test_output_dir_that_cannot_be_written_is_a_clear_error(sample_raw, tmp_path, capsys):
    (tmp_path / "a-file").write_text("in the way")
    code, err = _run(capsys, "--raw-dir", sample_raw[0], "--output-dir", tmp_path / "a-file" / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: cannot write into --output-dir {tmp_path / 'a-file' / 'out'}: ")


def test_bad_flags_exit_2(tmp_path, capsys):
    code, err = _run(capsys, "--raw-dir", tmp_path, "--output-dir", tmp_path / "o", "--valid-fraction", "1.5")
    assert code == 2 and err.strip() == "error: --valid-fraction must be in [0, 1), got 1.5"
    code, err = _run(capsys, "--raw-dir", tmp_path / "nope", "--output-dir", tmp_path / "o")
    assert code == 2 and "does not exist" in err
    dataflow = ["--runner", "DataflowRunner", "--project", "p", "--region", "r"]
    code, err = _run(capsys, "--raw-dir", "gs://b/raw", "--output-dir", tmp_path / "o", *dataflow)
    assert code == 2 and "needs a gs:// --output-dir" in err
    code, err = _run(capsys, "--raw-dir", "gs://b/raw.zip", "--output-dir", "gs://b/out", *dataflow)
    assert code == 2 and "needs --raw-dir as an extracted gs:// folder" in err
    assert not (tmp_path / "o").exists()
    assert task.with_direct_defaults(["--runner", "DataflowRunner"], 10**6) == ["--runner", "DataflowRunner"]
    assert task.with_direct_defaults(["--direct_num_workers", "1"], 10**6) == ["--direct_num_workers", "1"]
    assert task.with_direct_defaults([], 10) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--valid-fracton", "0.5"], "unrecognized flag --valid-fracton (did you mean --valid-fraction?)"),
        (["--foo", "1"], "unrecognized flag --foo: neither a flag of this job nor a Beam pipeline option"),
        (["--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
        (["--direct_num_workers", "abc"], "argument --direct_num_workers: invalid int value: 'abc'"),
        (["--direct_running_mode=in_memory", "--runer", "x"], "flag --runer (did you mean --runner?)"),
        (["--direct_running_mode=threads"], "argument --direct_running_mode: invalid choice: 'threads'"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_unknown_flags_and_bad_values_are_errors(tmp_path, capsys, flags, message):
    code, err = _run(capsys, "--raw-dir", tmp_path, "--output-dir", tmp_path / "o", *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert message in err and "usage:" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "beam",
    [
        ["--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode=multi_processing"],
        ["--runner=DirectRunner", "--direct_num_workers=1"],
        ["--project", "p", "--region", "r", "--temp_location", "gs://b/t", "--setup_file", "./setup.py"],
        ["--experiments", "a", "--experiments=b", "--job_name", "j", "--max_num_workers", "3"],
    ],
)
def test_beam_options_pass_in_both_forms(beam):
    config, beam_args = flags.parse_args(["--raw-dir", "r", "--seed", "3", *beam, "--output-dir", "o"])
    assert beam_args == beam and (config.raw_dir, config.output_dir, config.seed) == ("r", "o", 3)


def _listing(folder):
    """{relative path: bytes} of every file below ``folder``."""
    files = [path for path in pathlib.Path(folder).rglob("*") if path.is_file()]
    return {str(path.relative_to(folder)): path.read_bytes() for path in files}


def _no_partial_output(out):
    names = os.listdir(out) if os.path.isdir(out) else []
    assert not [n for n in names if n.startswith((".incomplete-", "beam-temp-", ".plan", ".counts"))], names
    assert not [n for n in names if ".tmp-" in n], names


def test_failed_job_publishes_nothing_and_keeps_the_earlier_output(converted, tmp_path, capsys):
    _bad_corpus(tmp_path / "raw")
    bad = ["--raw-dir", tmp_path / "raw", *SHARDS, "--max-reject-fraction", 0]
    fresh = tmp_path / "fresh"
    code, err = _run(capsys, *bad, "--output-dir", fresh)
    kept = fresh / fetch.FAILED_REJECTS_FILE
    assert code == 1 and len(err.strip().splitlines()) == 1 and f"see {kept}" in err, err
    assert os.listdir(fresh) == [fetch.FAILED_REJECTS_FILE], "no shard, metadata, staging or temp folder"
    assert len(kept.read_text().splitlines()) == 4

    # A failed --overwrite run leaves a complete earlier output exactly as it was.
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    before = _listing(out)
    code, err = _run(capsys, *bad, "--output-dir", out, "--overwrite")
    assert code == 1, err
    after = _listing(out)
    assert after.pop(fetch.FAILED_REJECTS_FILE) and after == before
    _no_partial_output(out)

    # A later successful run replaces all of it, the kept dead letters included.
    code, err = _run(capsys, *bad[:-1], 0.2, "--output-dir", out, "--overwrite")
    assert code == 0, err
    metadata = _metadata(str(out))
    shards = [s for info in metadata["splits"].values() for s in info["shards"]]
    assert sorted(os.listdir(out)) == sorted([*shards, schema.METADATA_FILE, schema.REJECTED_FILE])


def test_error_inside_the_pipeline_leaves_no_output(sample_raw, tmp_path, monkeypatch):
    close = transforms._ShardWriter.close
    closed = []

    def fail_after_three_shards(self):
        if len(closed) == 3:
            raise RuntimeError("injected failure while writing a shard")
        close(self)
        closed.append(self)

    monkeypatch.setattr(transforms._ShardWriter, "close", fail_after_three_shards)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="injected failure"):
        task.run(["--raw-dir", sample_raw[0], "--output-dir", str(out), *SHARDS])
    assert len(closed) == 3, "three shards were complete when the job failed"
    assert not out.exists(), "the staging folder and the --output-dir the job created are removed"


# Runs the job, but the process stops for good right after its first shard is complete.
_STALLED_JOB = """
import sys, time
from preprocessing import task, transforms
close = transforms._ShardWriter.close
def stall(self):
    close(self)
    time.sleep(300)
transforms._ShardWriter.close = stall
task.main()
"""


def _start_stalled_job(raw, out):
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLED_JOB, "--raw-dir", raw, "--output-dir", str(out), *SHARDS],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    while not list(out.glob(".incomplete-*/*.tfrecord")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the job did not write its first shard"
        time.sleep(0.2)
    return proc


def test_killed_job_leaves_no_partial_output(sample_raw, tmp_path, capsys):
    # SIGTERM unwinds like any failure: nothing is left, not even the folder the job created.
    out = tmp_path / "terminated"
    proc = _start_stalled_job(sample_raw[0], out)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not out.exists()

    # SIGKILL cannot be caught: the staging folder stays, but no shard or metadata.json is published.
    out = tmp_path / "killed"
    proc = _start_stalled_job(sample_raw[0], out)
    proc.kill()
    proc.wait(timeout=60)
    names = os.listdir(out)
    assert len(names) == 1 and names[0].startswith(".incomplete-"), names
    code, err = _run(capsys, "--raw-dir", sample_raw[0], "--output-dir", out, *SHARDS)
    assert code == 2 and "--overwrite" in err, "the leftover counts as content"
    code, err = _run(capsys, "--raw-dir", sample_raw[0], "--output-dir", out, *SHARDS, "--overwrite")
    assert code == 0, err
    _no_partial_output(out)
    assert schema.METADATA_FILE in os.listdir(out)
