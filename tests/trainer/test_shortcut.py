"""The shortcut alarm: a short Minception run on marked data raises it, the same run on clean data does not.

Both datasets come from ``preprocessing.sample`` (``shortcut_patch`` on and
off, same seed) through the Beam job; both runs are the trainer's command line
with the same flags, started side by side with one TensorFlow thread each:
much of a short run is single-threaded anyway (tracing the steps, the
export), and two runs with TensorFlow's default thread pools (a thread per
core each) fight over the two cores (the pair took 145 s instead of 106 s).
"""

import os
import time

import pytest

from explain import callback
from preprocessing import sample
from tests import datasets, events, tiers
from tests.trainer import helpers

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 60, 4
EPOCHS, STREAK = 3, 2
# A probe every epoch and a streak of 2: the marked run's pointing game is far
# below the centre baseline from the first epoch on, so two probes of rising
# accuracy suffice. With dropout off, minception's learning rate learns the
# marker within 3 epochs of 18 steps (batches of 16 at twice the rate, half the
# steps, sometimes had not by the third epoch). The precise batch-norm pass, the
# temperature fit and the export are off to keep the run short.
FLAGS = ["--arch", "minception", "--epochs", str(EPOCHS), "--batch-size", "8", "--dropout", "0"]
FLAGS += ["--precise-bn", "0", "--calibration", "none", "--export", "false", "--monitor-start-epoch", "0"]
FLAGS += ["--explain-every", "1", "--shortcut-probes", str(STREAK)]
ALARM = "shortcut alarm at epoch"
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def train_pair(root, data_seed=3, seed=1):
    """Writes marked and clean data and trains on both at once; returns ``name -> (job dir, log text)``.

    Each run starts as soon as its records are written, so the second Beam job
    overlaps the first run's start.
    """
    processes = {}
    try:
        for name, marked in (("clean", False), ("marked", True)):
            spec = sample.SampleSpec(
                classes=CLASSES,
                train_per_class=TRAIN_PER_CLASS,
                val_per_class=VAL_PER_CLASS,
                test_images=0,
                seed=data_seed,
                shortcut_patch=marked,
            )
            raw, records, job = (str(root / name / folder) for folder in ("raw", "records", "job"))
            sample.write_sample_dataset(raw, spec)
            # A fifth of train/ for `valid`: 36 probe images.
            datasets.write_records(raw, records, num_shards=1, valid_fraction=0.2)
            args = ["--data-dir", records, "--job-dir", job, *FLAGS, "--seed", str(seed)]
            log = root / name / "log.txt"
            processes[name] = (job, log, helpers.start_cli(args, log, **ONE_THREAD))
        results = {}
        for name, (job, log, proc) in processes.items():
            code = proc.wait(timeout=600)
            assert code == 0, helpers.tail(log)
            results[name] = (job, log.read_text())
    finally:
        for _, _, proc in processes.values():
            if proc.poll() is None:
                proc.kill()
    return results


@pytest.fixture(scope="module")
@tiers.long("a marked and a clean run of several epochs")
def runs(tmp_path_factory):
    """The marked and the clean run (:func:`train_pair`)."""
    started = time.time()
    results = train_pair(tmp_path_factory.mktemp("shortcut"))
    print(f"shortcut pair: {time.time() - started:.1f}s")
    return results


def _report(job):
    metrics = helpers.read_job_json(job, "metrics.json")
    rows = helpers.read_history(job)
    print(os.path.basename(os.path.dirname(job)), metrics["explanations"])
    for row in rows:
        print({key: row.get(key) for key in ("epoch", "val_accuracy", *callback.SCORES)})
    return metrics["explanations"], rows


def test_marked_data_raises_the_shortcut_alarm(runs):
    job, log = runs["marked"]
    explanations, rows = _report(job)
    assert explanations["shortcut_alarm"] is True, explanations
    epoch = explanations["epoch"]
    assert epoch in range(STREAK - 1, EPOCHS) and explanations["streak"] == STREAK
    assert explanations["pointing_game"] <= explanations["center_baseline"]
    assert explanations["val_accuracy"] == pytest.approx(float(rows[epoch]["val_accuracy"]), abs=1e-5)
    warnings = [line for line in helpers.warnings(log) if line.startswith(ALARM)]
    assert len(warnings) == 1 and warnings[0].startswith(f"{ALARM} {epoch}:"), log[-3000:]
    # One text summary in the Grad-CAM run, at that run's step (epochs completed).
    texts = events.read_events(os.path.join(job, "logs", "gradcam"), "text")
    assert list(texts) == [callback.ALARM_TAG] and list(texts[callback.ALARM_TAG]) == [epoch + 1]
    assert texts[callback.ALARM_TAG][epoch + 1].item().decode() in warnings[0]
    # The scores of every probe sit beside the validation accuracy, at the same steps.
    scalars = events.read_events(os.path.join(job, "logs", "validation"), "scalars")
    for tag in (*callback.SCORES.values(), "epoch_accuracy"):
        assert sorted(scalars[tag]) == list(range(EPOCHS)), tag
    # history.csv keeps 6 significant digits, TensorBoard float32.
    assert [float(row["gradcam_pointing_game"]) for row in rows] == pytest.approx(
        [float(scalars["gradcam/pointing_game"][step]) for step in range(EPOCHS)], abs=1e-5
    )


def test_clean_data_raises_no_alarm(runs):
    job, log = runs["clean"]
    explanations, _ = _report(job)
    assert explanations["shortcut_alarm"] is False and explanations["epoch"] is None, explanations
    assert explanations["probes"] == EPOCHS
    # The model looks at the objects: the pointing game beats the centre baseline at the end.
    assert explanations["pointing_game"] > explanations["center_baseline"]
    assert "shortcut alarm" not in log
    assert callback.ALARM_TAG not in events.read_events(os.path.join(job, "logs", "gradcam"), "text")
