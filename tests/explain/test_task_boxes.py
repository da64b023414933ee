"""python -m explain.task without object boxes, or with boxes covering the whole image, and the
demo's summary table of such runs."""

import importlib.util
import io
import json
import os
import re
import shutil

import pytest

from contracts import jobdir, voice
from explain import task
from tests import tiers
from tests.events import latest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _lines(stream):
    """The messages of a voice's lines (what follows ``HH:MM:SS explain: ``)."""
    return [voice.LINE_PATTERN.fullmatch(line).group(3) for line in stream.splitlines()]


@pytest.fixture(scope="module")
@tiers.dev("explain.task with every score, the sanity checks included: seconds")
def skipped_run(untrained_job, boxless_records, tmp_path_factory):
    """``explain.task`` with every score on the sample without boxes: ``(results, messages, logdir)``."""
    job, _ = untrained_job
    logdir = str(tmp_path_factory.mktemp("skipped") / "logs")
    config = task.ExplainConfig(
        model=job,
        data_dir=boxless_records,
        logdir=logdir,
        num_images=8,
        batch_size=4,
        sanity=True,
        sanity_layers=2,
        sanity_images=4,
    )
    stream = io.StringIO()
    results = task.run(config, speaker=voice.Voice("explain", stream))
    return results, _lines(stream.getvalue()), logdir


def test_dataset_without_boxes_skips_the_pointing_game_once(skipped_run):
    results, messages, logdir = skipped_run
    reason = "the dataset has no object boxes (metadata.json: 0 boxes in test)"
    assert [m for m in messages if "pointing" in m] == [f"pointing game skipped: {reason}"], messages
    # The progress lines count the images and give the accuracy so far instead.
    progress = [m for m in messages if re.match(r"\d+/8 images", m)]
    assert len(progress) == 2 and all(re.search(r"; accuracy so far [\d.]+$", m) for m in progress), progress
    with open(os.path.join(logdir, "explain.json")) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(results))
    # A reason, no score: not 0, not 1, not null.
    assert written["pointing_game"] == {"skipped": reason}
    assert written["n_with_box"] == 0 and written["n"] == 8
    assert not {"energy_in_box", "energy_baselines", "per_class"} & set(written)
    # Deletion, insertion, ROAD and the sanity check still run.
    scores = written["faithfulness"]
    assert scores["n"] == 8
    for metric in ("deletion", "insertion", "road_morf", "road_lerf"):
        assert all(isinstance(scores[metric][key], float) for key in ("auc", "random_auc", "center_auc"))
    assert written["sanity"]["spearman"][0] == pytest.approx(1.0) and len(written["sanity"]["spearman"]) == 3
    assert any(m.startswith("faithfulness areas: deletion") for m in messages)
    assert any(m.startswith("sanity check, rank correlation") for m in messages)
    assert messages[-1] == f"accuracy {written['accuracy']:.3f} on 8 images"

    events = latest(logdir)
    assert not [tag for tag in events if tag.startswith(("pointing_game", "energy_in_box"))]
    assert events["faithfulness/deletion_auc"][0] == "scalars" and events["sanity/spearman"][0] == "scalars"
    assert sum(tag.startswith("gradcam/grid_") for tag in events) == 1  # the panels are still drawn
    text = events["explain/results"][1].item().decode()
    assert f'"skipped": "{reason}"' in text


def test_older_dataset_without_a_box_count_skips_on_the_chosen_images(
    untrained_job, boxless_records_uncounted, tmp_path, capsys
):
    job, _ = untrained_job
    logdir = str(tmp_path / "logs")
    argv = ["--model", job, "--data-dir", boxless_records_uncounted, "--logdir", logdir]
    argv += ["--num-images", "6", "--split", "valid", "--no-faithfulness"]
    assert task.main(argv) == 0
    messages = _lines(capsys.readouterr().err)
    reason = "none of the 6 selected valid images has an object box"
    assert [m for m in messages if "pointing" in m] == [f"pointing game skipped: {reason}"], messages
    with open(os.path.join(logdir, "explain.json")) as f:
        assert json.load(f)["pointing_game"] == {"skipped": reason}


def test_whole_image_boxes_are_scored_and_flagged_once(untrained_job, whole_image_box_records, tmp_path):
    job, _ = untrained_job
    logdir = str(tmp_path / "logs")
    config = task.ExplainConfig(
        model=job, data_dir=whole_image_box_records, logdir=logdir, num_images=6, faithfulness=False
    )
    stream = io.StringIO()
    results = task.run(config, speaker=voice.Voice("explain", stream))
    game = results["pointing_game"]
    # The numbers are kept: every peak, the baselines' too, is in a whole-image box.
    assert game["hit_rate"] == game["center_baseline"] == game["random_baseline"] == 1.0
    assert game["whole_image_boxes"] == 1.0 and results["n_with_box"] == 6
    line = (
        "the pointing game cannot tell the model from its baselines: the boxes of 6 of 6 scored images "
        "cover at least 90% of the image, so the centre and random baselines hit too "
        "(1.000 and 1.000 against the model's 1.000)"
    )
    assert game["uninformative"] == line
    messages = _lines(stream.getvalue())
    assert messages.count(line) == 1 and messages[-1] == line
    assert float(latest(logdir)["pointing_game/hit_rate"][1]) == 1.0


def _demo_job(demo, arch, explain_json):
    """A demo job folder holding ``explain_json`` as explain.task wrote it, and a metrics.json."""
    job = demo / "jobs" / arch
    logs = job / jobdir.FOLDERS["logs"] / jobdir.EXPLAIN_LOGS
    logs.mkdir(parents=True)
    shutil.copy(explain_json, logs / jobdir.EXPLAIN_RESULTS_FILE)
    metrics = {"epochs_completed": 2, "test": {"accuracy": 0.5, "top5_accuracy": 0.9}}
    (job / jobdir.METRICS_FILE).write_text(json.dumps(metrics))


def _demo_summary():
    path = os.path.join(ROOT, "scripts", "demo_summary.py")
    spec = importlib.util.spec_from_file_location("demo_summary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_summary_says_once_that_the_pointing_game_was_skipped(skipped_run, tmp_path, capsys):
    _, _, logdir = skipped_run
    for arch in ("minception", "inception_v1"):
        _demo_job(tmp_path, arch, os.path.join(logdir, jobdir.EXPLAIN_RESULTS_FILE))
    assert _demo_summary().main(["demo_summary.py", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.startswith(("minception", "inception_v1"))]
    assert [row[4:] for row in rows] == [["skipped", "-", "-"]] * 2
    reason = "the dataset has no object boxes (metadata.json: 0 boxes in test)"
    assert [line for line in out if "pointing game" in line and "skipped:" in line] == [
        f"pointing game skipped: {reason}"
    ]
