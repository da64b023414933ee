"""Flags after ``--`` meet the launched program's own parser and value checks at submit time."""

import subprocess
import sys

import pytest
from google.cloud import aiplatform_v1

from deploy import checks, hptune, submit

IMAGE = "us-docker.pkg.dev/my-project/train/tiny-inception:1.0"
TRAIN = ["--image", IMAGE, "--arch", "minception", "--data-dir", "gs://my-bucket/records"]
TRAIN += ["--job-dir", "gs://my-bucket/jobs/run1", "--name", "run1"]
VERTEX = ["--project", "my-project", "--region", "europe-west4"]
COMMANDS = {
    "vertex": ["vertex", *TRAIN, *VERTEX],
    "gke": ["gke", *TRAIN],
    "hptune": ["hptune", *TRAIN, *VERTEX],
}
DATAFLOW = ["dataflow", "--raw-dir", "gs://my-bucket/raw", "--output-dir", "gs://my-bucket/records"]
DATAFLOW += ["--project", "my-project", "--temp-location", "gs://my-bucket/tmp", "--name", "preprocess-1"]
TRAINER_PREFIX = "error: trainer flags after --: "
PREPROCESSING_PREFIX = "error: preprocessing flags after --: "


def _refused(capsys, argv):
    """Runs the CLI, expecting exit 2; returns its one stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        submit.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing built: not even the dry run's spec
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "-5"], "--epochs must be >= 1, got -5"),
        (["--epohcs", "5"], "unrecognized arguments: --epohcs 5 (did you mean --epochs?)"),
        (["--epochs", "five"], "argument --epochs: invalid int value: 'five'"),
        (["--lr-warmup-epochs", "3"], "--lr-warmup-epochs needs lr_schedule cosine"),
        (["--randaugment", "2,40"], "randaugment_magnitude must be in [0, 30], got 40"),
    ],
)
def test_bad_trainer_flag_is_one_line(capsys, command, extra, message):
    line = _refused(capsys, [*COMMANDS[command], "--dry-run", "--", *extra])
    assert line == TRAINER_PREFIX + message


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_good_trainer_flags_still_dry_run(capsys, command):
    extra = ["--epochs", "60", "--recipe", "modern", "--lr-warmup-epochs", "3", "--no-explain"]
    assert submit.main([*COMMANDS[command], "--dry-run", "--", *extra]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert all(word in captured.out for word in extra)  # the spec (JSON or YAML) passes them on


@pytest.mark.parametrize("recipe", [["--recipe", "modern"], []], ids=["explicit", "default"])
def test_checks_need_neither_data_nor_the_config_file(capsys, recipe):
    # A modern recipe (the default) with --steps-per-epoch counts the training images of the
    # data; the config file is a path in the image: neither is read at submit time.
    extra = [*recipe, "--steps-per-epoch", "500"]
    extra += ["--lr-warmup-epochs", "2", "--config", "/etc/trainer/does-not-exist.yaml"]
    assert submit.main([*COMMANDS["vertex"], "--dry-run", "--", *extra]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("flag", "value"), [("--learning-rate", "0.01"), ("--dropout", "0.3"), ("--batch-size", "64")]
)
def test_tuned_flag_after_dashes_is_refused(capsys, flag, value):
    line = _refused(capsys, [*COMMANDS["hptune"], "--dry-run", "--", f"{flag}={value}"])
    assert line == f"error: {flag} is tuned: every trial passes its own value; drop it after '--'"
    # The same flag is fine where nothing tunes it.
    assert submit.main([*COMMANDS["vertex"], "--dry-run", "--", f"{flag}={value}"]) == 0


def test_tuned_parameters_pass_the_check_at_every_bound(capsys):
    """Each trial's arguments (fixed flags plus the tuned values) pass the trainer's checks."""
    assert submit.main([*COMMANDS["hptune"], "--dry-run", "--", "--epochs", "15"]) == 0
    job = aiplatform_v1.HyperparameterTuningJob.from_json(capsys.readouterr().out)
    selection = aiplatform_v1.StudySpec.MeasurementSelectionType
    # The trial's last report (the final evaluation) is its measurement.
    assert job.study_spec.measurement_selection_type == selection.LAST_MEASUREMENT
    args = list(job.trial_job_spec.worker_pool_specs[0].container_spec.args)
    params = job.study_spec.parameters
    assert tuple(f"--{p.parameter_id}" for p in params) == checks.TUNED_TRAINER_FLAGS
    for param in params:
        if param.discrete_value_spec.values:
            values = [int(v) for v in param.discrete_value_spec.values]
        else:
            values = [param.double_value_spec.min_value, param.double_value_spec.max_value]
        for value in values:
            checks.check_trainer_flags([*args, f"--{param.parameter_id}={value}"])
    assert hptune.METRIC_TAG == "accuracy"


# Flag sets for the parity check: each is accepted by both checks or refused by both.
PARITY = [
    ["--epochs", "3"],
    ["--epochs", "0"],
    ["--epohcs", "3"],
    ["--lr-warmup-epochs", "3"],
    ["--lr-schedule", "cosine", "--lr-warmup-epochs", "3"],
    ["--lr-schedule", "cosine", "--lr-warmup-epochs", "50"],
    ["--recipe", "modern", "--lr-warmup-epochs", "2"],
    ["--recipe", "modern", "--epochs", "80", "--lr-warmup-epochs", "2"],
    ["--randaugment", "2,9", "--mixup", "0.2"],
    ["--dropout", "1.0"],
    ["--weights", "none", "--precise-bn", "auto", "--mixed-precision"],
    ["--ema", "1.5"],
    ["--warmup-epochs", "2"],
]


@pytest.mark.parametrize("arch", ["minception", "inception_v1"])
def test_same_verdict_as_the_trainer(arch):
    """The submit-time check agrees with ``trainer.task.resolve`` (which has the architecture's defaults)."""
    from trainer import task

    base = ["--arch", arch, "--data-dir", "gs://my-bucket/d", "--job-dir", "gs://my-bucket/j"]
    for extra in PARITY:
        argv = [*base, "--strategy", "mirrored", *extra]
        try:
            task.resolve(argv, environ={})
            trainer_accepts = True
        except (ValueError, SystemExit):
            trainer_accepts = False
        try:
            checks.check_trainer_flags(argv)
            submit_accepts = True
        except checks.ConfigError:
            submit_accepts = False
        assert submit_accepts == trainer_accepts, extra


def test_submit_path_does_not_import_tensorflow():
    source = (
        "import sys\n"
        "from deploy import submit\n"
        f"submit.main({[*COMMANDS['vertex'], '--dry-run', '--', '--epochs', '3']!r})\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--valid-fraction", "2"], "--valid-fraction must be in [0, 1), got 2.0"),
        (["--num-shards-train", "many"], "argument --num-shards-train: invalid int value: 'many'"),
        (
            ["--valid-fracton", "0.5"],
            "unrecognized flag --valid-fracton (did you mean --valid-fraction?): "
            "neither a flag of this job nor a Beam pipeline option",
        ),
    ],
)
def test_bad_preprocessing_flag_is_one_line(capsys, monkeypatch, extra, message):
    from preprocessing import task

    ran = []
    monkeypatch.setattr(task, "run", ran.append)
    # Without --dry-run too: the in-process job is never started.
    assert _refused(capsys, [*DATAFLOW, "--", *extra]) == PREPROCESSING_PREFIX + message
    assert _refused(capsys, [*DATAFLOW, "--dry-run", "--", *extra]) == PREPROCESSING_PREFIX + message
    assert ran == []


def test_good_preprocessing_flags_still_dry_run(capsys):
    extra = ["--num-shards-train", "8", "--valid-fraction", "0.2", "--experiments=use_runner_v2"]
    assert submit.main([*DATAFLOW, "--dry-run", "--", *extra]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.split()[-5:] == extra


def test_preprocessing_check_process_prints_one_line():
    """TensorFlow and Beam load for the check; their native start-up logs stay off stderr."""
    command = [sys.executable, "-m", "deploy.submit", *DATAFLOW, "--dry-run", "--", "--seed", "x"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [PREPROCESSING_PREFIX + "argument --seed: invalid int value: 'x'"]
