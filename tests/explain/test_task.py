"""python -m explain.task: image choice, TensorBoard output, explain.json, pointing game, errors."""

import io
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from contracts import dataset as data
from contracts import storage, voice
from explain import selection, task
from tests import tiers
from tests.events import latest
from tests.explain import NUM_CLASSES, small_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
@tiers.long("fits a small CNN for 360 steps")
def trained_job(sample_records, sample_info, tmp_path_factory):
    """A job dir with a small CNN trained briefly on the sample (objects at known boxes)."""
    data_dir, _ = sample_records
    keras.utils.set_random_seed(0)
    train = data.make_dataset(
        sample_info, "train", global_batch_size=16, training=True, policy="none", seed=0
    )
    model = small_cnn(64)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, epochs=30, steps_per_epoch=12, verbose=0)
    job = tmp_path_factory.mktemp("job")
    model.save(str(job / "model.keras"))
    config = {"arch": "small_cnn", "policy": "none", "crop_size": 56, "data_dir": data_dir}
    (job / "config.json").write_text(json.dumps(config))
    return str(job), data_dir


def _batches(labels, names, batch_size):
    for start in range(0, len(labels), batch_size):
        stop = start + batch_size
        yield {
            "label": np.asarray(labels[start:stop]),
            "filename": np.asarray([n.encode() for n in names[start:stop]]),
            "image": np.zeros((len(labels[start:stop]), 2, 2, 3), np.float32),
        }


def test_select_examples_is_seeded_and_order_independent():
    labels = [i % 4 for i in range(60)]
    names = [f"img_{i}.JPEG" for i in range(60)]
    first = selection.select_examples(_batches(labels, names, 7), 10, seed=1)
    order = np.random.default_rng(0).permutation(60)
    shuffled = selection.select_examples(
        _batches([labels[i] for i in order], [names[i] for i in order], 13), 10, seed=1
    )
    assert len(first["label"]) == 10
    assert first["filename"].tolist() == shuffled["filename"].tolist()
    other = selection.select_examples(_batches(labels, names, 7), 10, seed=2)
    assert set(other["filename"].tolist()) != set(first["filename"].tolist())


def test_select_examples_balanced():
    labels = [0] * 40 + [1] * 5 + [2] * 15
    names = [f"img_{i}.JPEG" for i in range(60)]
    chosen = selection.select_examples(_batches(labels, names, 8), 9, seed=0, balanced=True, num_classes=3)
    assert np.bincount(chosen["label"], minlength=3).tolist() == [3, 3, 3]
    few = selection.select_examples(_batches(labels, names, 8), 2, seed=0, balanced=True, num_classes=3)
    assert len(set(few["label"].tolist())) == 2


def test_trained_model_beats_centre_baseline_and_writes_everything(trained_job, tmp_path, capsys):
    job, data_dir = trained_job
    logdir, out_dir = str(tmp_path / "logs"), str(tmp_path / "png")
    argv = ["--model", job, "--data-dir", data_dir, "--split", "test", "--num-images", "40"]
    argv += ["--batch-size", "16", "--logdir", logdir, "--out-dir", out_dir, "--seed", "0"]
    assert task.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    messages = [voice.LINE_PATTERN.fullmatch(line).group(3) for line in captured.err.splitlines()]
    counts = [re.match(r"(\d+/40) images, [\d.]+ s; ", message) for message in messages]
    assert [m.group(1) for m in counts if m] == ["16/40", "32/40", "40/40"], messages
    assert any(message.startswith("pointing game ") for message in messages), messages

    with open(os.path.join(logdir, "explain.json")) as f:
        results = json.load(f)
    assert results["method"] == "gradcam" and results["layer"] == "features" and results["n"] == 40
    game = results["pointing_game"]
    assert set(game) >= {"hit_rate", "center_baseline", "random_baseline"}
    # The objects sit at random places: a model that looks at them beats the centre.
    assert game["hit_rate"] >= 0.7
    assert game["hit_rate"] >= game["center_baseline"] + 0.2
    assert game["hit_rate"] >= game["random_baseline"] + 0.3
    assert results["energy_in_box"] > results["energy_baselines"]["center_baseline"]
    assert len(results["per_class"]) == NUM_CLASSES
    assert sum(entry["n"] for entry in results["per_class"]) == 40

    events = latest(logdir)
    grids = sorted(tag for tag, (plugin, _) in events.items() if plugin == "images" and "grid" in tag)
    assert grids == [f"gradcam/grid_{k:03d}" for k in range(5)]  # 40 panels, 8 per grid
    width, height = (int(v) for v in events["gradcam/grid_000"][1][:2])
    assert width > 600 and height > 500
    assert events["pointing_game/hit_rate"][0] == "scalars"
    assert float(events["pointing_game/hit_rate"][1]) == pytest.approx(game["hit_rate"])
    assert float(events["pointing_game/center_baseline"][1]) == pytest.approx(game["center_baseline"])
    assert float(events["energy_in_box/mean"][1]) == pytest.approx(results["energy_in_box"])
    assert sum(tag.startswith("pointing_game_per_class/") for tag in events) == NUM_CLASSES
    assert sorted(os.listdir(out_dir)) == [f"gradcam_grid_{k:03d}.png" for k in range(5)]

    # Faithfulness: removing what Grad-CAM ranks first hurts the class more than removing
    # what a random map ranks first, and restoring it first helps more.
    scores = results["faithfulness"]
    assert scores["n"] == 40 and scores["fractions"][0] == 0.0 and scores["fractions"][-1] == 1.0
    assert scores["deletion"]["auc"] < scores["deletion"]["random_auc"]
    assert scores["insertion"]["auc"] > scores["insertion"]["random_auc"]
    assert scores["road_morf"]["auc"] < scores["road_morf"]["random_auc"]
    for metric in ("deletion", "insertion", "road_morf", "road_lerf"):
        for name, key in (("", "auc"), ("_random", "random_auc"), ("_center", "center_auc")):
            shown = float(events[f"faithfulness/{metric}_auc{name}"][1])
            assert shown == pytest.approx(scores[metric][key], rel=1e-6)
    assert events["faithfulness/gradcam_curves"][0] == "images"
    assert any(message.startswith("faithfulness areas: deletion") for message in messages), messages
    assert "sanity" not in results


def test_sanity_check_randomises_the_top_layers(trained_job, tmp_path, capsys):
    job, data_dir = trained_job
    logdir = str(tmp_path / "logs")
    argv = ["--model", job, "--data-dir", data_dir, "--logdir", logdir, "--num-images", "8"]
    argv += ["--sanity", "--sanity-layers", "2", "--sanity-images", "6", "--no-faithfulness"]
    assert task.main(argv) == 0
    with open(os.path.join(logdir, "explain.json")) as f:
        results = json.load(f)
    assert "faithfulness" not in results
    check = results["sanity"]
    assert check["method"] == "gradcam" and check["layer"] == "features"
    assert check["layers"] == ["predictions", "conv2"]  # top first
    assert check["spearman"][0] == pytest.approx(1.0)
    # Grad-CAM depends on the weights: with the head and the last block random the maps decorrelate.
    assert max(check["spearman"][1:]) < 0.8
    events = latest(logdir)
    assert events["sanity/gradcam"][0] == "images"
    width, height = (int(v) for v in events["sanity/gradcam"][1][:2])
    assert height > 6 * 90 and width > 4 * 90  # 6 image rows; image, original and 2 randomised columns
    assert "rank correlation with the original maps" in capsys.readouterr().err


def test_gcs_logdir_and_out_dir(untrained_job, gcs_bucket, tmp_path):
    job, data_dir = untrained_job
    logdir, out_dir = f"gs://{gcs_bucket}/runs/a/logs/explain", f"gs://{gcs_bucket}/png"
    config = task.ExplainConfig(
        model=job,
        data_dir=data_dir,
        logdir=logdir,
        out_dir=out_dir,
        split="valid",
        num_images=10,
        batch_size=4,
        panels_per_grid=4,
        road=False,
    )
    stream = io.StringIO()
    results = task.run(config, speaker=voice.Voice("explain", stream))

    # One voice: every line "HH:MM:SS explain: ...", one per batch of 4 with the running count.
    lines = stream.getvalue().splitlines()
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d explain: .+", line) for line in lines), lines
    counts = [re.search(r"explain: (\d+/10) images, [\d.]+ s; pointing-game", line) for line in lines]
    assert [m.group(1) for m in counts if m] == ["4/10", "8/10", "10/10"]

    client = storage.gcs_client()
    names = sorted(blob.name for blob in client.list_blobs(gcs_bucket))
    grids = [f"png/gradcam_grid_{k:03d}.png" for k in range(3)]  # 10 panels, 4 per grid
    assert [name for name in names if name.startswith("png/")] == grids
    logs = [name for name in names if name.startswith("runs/a/logs/explain/")]
    events = [name for name in logs if os.path.basename(name).startswith("events.out.tfevents.")]
    assert len(events) == 1 and sorted(logs) == sorted([*events, "runs/a/logs/explain/explain.json"])

    written = json.loads(storage.read_bytes(f"{logdir}/explain.json"))
    assert written == json.loads(json.dumps(results))
    assert written["n"] == 10 and written["split"] == "valid"

    local = tmp_path / "events"
    local.mkdir()
    client.bucket(gcs_bucket).blob(events[0]).download_to_filename(str(local / os.path.basename(events[0])))
    summaries = latest(str(local))
    assert float(summaries["pointing_game/hit_rate"][1]) == pytest.approx(
        results["pointing_game"]["hit_rate"]
    )
    assert float(summaries["energy_in_box/mean"][1]) == pytest.approx(results["energy_in_box"])
    for k, name in enumerate(grids):
        # The PNG in the bucket is the grid TensorBoard shows ([width, height, png] summary).
        png = client.bucket(gcs_bucket).blob(name).download_as_bytes()
        shown = summaries[f"gradcam/grid_{k:03d}"][1][2]
        np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), tf.io.decode_png(shown).numpy())


@tiers.dev("explain.task on a second model: seconds")
def test_keras_file_with_smaller_input_is_centre_cropped(sample_records, tmp_path):
    data_dir, _ = sample_records
    path = str(tmp_path / "small.keras")
    small_cnn(56).save(path)
    logdir = str(tmp_path / "logs")
    argv = ["--model", path, "--data-dir", data_dir, "--logdir", logdir, "--num-images", "6"]
    argv += ["--method", "layercam", "--balanced", "--split", "valid", "--tolerance", "3"]
    assert task.main(argv) == 0
    with open(os.path.join(logdir, "explain.json")) as f:
        results = json.load(f)
    assert results["policy"] == "crop" and results["input_size"] == 56
    assert results["method"] == "layercam" and results["n"] == 6 and results["tolerance"] == 3
    assert len(results["per_class"]) == NUM_CLASSES  # balanced: 5 classes among 6 images


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "missing-job"}, "model not found"),
        ({"--data-dir": "missing-data"}, "metadata"),
        ({"--method": "gradcam3"}, "Unknown method 'gradcam3'"),
        ({"--layer": "no_such_layer"}, "Unknown layer 'no_such_layer'"),
        ({"--num-images": "0"}, "--num-images must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(untrained_job, tmp_path, capsys, change, message):
    job, data_dir = untrained_job
    options = {"--model": job, "--data-dir": data_dir, "--logdir": str(tmp_path / "logs")}
    options.update(
        {key: str(tmp_path / value) if "missing" in value else value for key, value in change.items()}
    )
    argv = [item for pair in options.items() for item in pair]
    assert task.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cli_usage_error_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "explain.task", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--data-dir" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--logdir", "--out-dir"])
@pytest.mark.parametrize("below", [False, True])
def test_output_folder_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys, flag, below):
    """Checked before the model or the data is read (both are missing here)."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    target = str(in_the_way / "sub") if below else str(in_the_way)
    argv = ["--model", str(tmp_path / "job"), "--data-dir", str(tmp_path), "--logdir", str(tmp_path / "logs")]
    assert task.main([*argv, flag, target]) == 2
    problem = f"{in_the_way} is a file, not a folder" if below else "is a file, not a folder"
    assert capsys.readouterr().err.splitlines() == [f"error: {flag} {target}: {problem}"]
