"""Vertex AI CustomJob and hyperparameter tuning specs from the deploy CLI, and its bad-flag errors."""

import subprocess
import sys

import pytest
from google.cloud import aiplatform_v1

from deploy import checks, hptune, submit

SA = "trainer@my-project.iam.gserviceaccount.com"
BASE = [
    "--image",
    "us-docker.pkg.dev/my-project/train/tiny-inception:1.0",
    "--arch",
    "minception",
    "--data-dir",
    "gs://my-bucket/records",
    "--job-dir",
    "gs://my-bucket/jobs/run1",
    "--name",
    "run1",
    "--project",
    "my-project",
    "--region",
    "europe-west4",
]


def _dry_run(capsys, command, *flags, extra=()):
    argv = [command, *BASE, *flags, "--dry-run"]
    if extra:
        argv += ["--", *extra]
    assert submit.main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("workers", "gpus", "gpu_type", "accelerator"),
    [
        (1, 1, None, "NVIDIA_TESLA_T4"),
        (1, 4, "nvidia-l4", "NVIDIA_L4"),
        (2, 4, "NVIDIA_A100_80GB", "NVIDIA_A100_80GB"),
    ],
)
def test_custom_job_layouts(capsys, workers, gpus, gpu_type, accelerator):
    flags = ["--workers", str(workers), "--gpus", str(gpus), "--machine-type", "a2-ultragpu-4g"]
    flags += ["--gpu-type", gpu_type] if gpu_type else []
    flags += ["--service-account", SA, "--tensorboard", "42", "--timeout", "1h30m"]
    flags += ["--restart-job-on-worker-restart"]
    out = _dry_run(capsys, "vertex", *flags, extra=["--epochs", "3", "--batch-size", "64"])
    job = aiplatform_v1.CustomJob.from_json(out)

    assert job.display_name == "run1"
    spec = job.job_spec
    pools = spec.worker_pool_specs
    # One machine: a single pool (MirroredStrategy); several: chief + workers.
    assert [p.replica_count for p in pools] == ([1] if workers == 1 else [1, workers - 1])
    expected_args = [
        "--arch",
        "minception",
        "--data-dir",
        "gs://my-bucket/records",
        "--job-dir",
        "gs://my-bucket/jobs/run1",
        "--strategy",
        "mirrored" if workers == 1 else "multi_worker",
        "--epochs",
        "3",
        "--batch-size",
        "64",
    ]
    for pool in pools:
        assert pool.machine_spec.machine_type == "a2-ultragpu-4g"
        assert pool.machine_spec.accelerator_type == aiplatform_v1.AcceleratorType[accelerator]
        assert pool.machine_spec.accelerator_count == gpus
        assert pool.container_spec.image_uri == "us-docker.pkg.dev/my-project/train/tiny-inception:1.0"
        assert list(pool.container_spec.command) == []  # the image's ENTRYPOINT runs trainer.task
        assert list(pool.container_spec.args) == expected_args
    assert spec.base_output_directory.output_uri_prefix == "gs://my-bucket/jobs/run1"
    assert spec.service_account == SA
    assert spec.tensorboard == "projects/my-project/locations/europe-west4/tensorboards/42"
    assert spec.scheduling.restart_job_on_worker_restart is True
    assert spec.scheduling.timeout.total_seconds() == 5400


def test_custom_job_defaults_and_cpu(capsys):
    job = aiplatform_v1.CustomJob.from_json(_dry_run(capsys, "vertex"))
    (pool,) = job.job_spec.worker_pool_specs
    assert pool.machine_spec.machine_type == checks.DEFAULT_VERTEX_MACHINE_TYPE
    assert pool.machine_spec.accelerator_type == aiplatform_v1.AcceleratorType.NVIDIA_TESLA_T4
    assert pool.machine_spec.accelerator_count == 1
    assert job.job_spec.scheduling.restart_job_on_worker_restart is False
    assert not job.job_spec.service_account
    assert not job.job_spec.tensorboard

    cpu = aiplatform_v1.CustomJob.from_json(_dry_run(capsys, "vertex", "--gpus", "0"))
    (pool,) = cpu.job_spec.worker_pool_specs
    assert pool.machine_spec.accelerator_count == 0
    assert pool.machine_spec.accelerator_type == aiplatform_v1.AcceleratorType.ACCELERATOR_TYPE_UNSPECIFIED


def test_hyperparameter_tuning_job(capsys):
    flags = ["--workers", "2", "--gpus", "4", "--max-trials", "20", "--parallel-trials", "4"]
    out = _dry_run(capsys, "hptune", *flags, extra=["--epochs", "5"])
    job = aiplatform_v1.HyperparameterTuningJob.from_json(out)
    assert (job.max_trial_count, job.parallel_trial_count) == (20, 4)
    (metric,) = job.study_spec.metrics
    assert metric.metric_id == hptune.METRIC_TAG == "accuracy"
    assert metric.goal == aiplatform_v1.StudySpec.MetricSpec.GoalType.MAXIMIZE
    params = {p.parameter_id: p for p in job.study_spec.parameters}
    # Vertex AI passes --<parameter_id>=<value>: the ids must be the trainer's flag names.
    assert {f"--{name}" for name in params} == {"--learning-rate", "--dropout", "--batch-size"}
    scale = aiplatform_v1.StudySpec.ParameterSpec.ScaleType
    assert params["learning-rate"].scale_type == scale.UNIT_LOG_SCALE
    learning_rate, dropout = params["learning-rate"].double_value_spec, params["dropout"].double_value_spec
    assert 0 < learning_rate.min_value < learning_rate.max_value
    assert 0 <= dropout.min_value < dropout.max_value < 1
    assert list(params["batch-size"].discrete_value_spec.values) == [32, 64, 128, 256]
    pools = job.trial_job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 1]
    args = list(pools[0].container_spec.args)
    assert args[-2:] == ["--epochs", "5"]
    assert args[args.index("--strategy") + 1] == "multi_worker"
    assert job.trial_job_spec.base_output_directory.output_uri_prefix == "gs://my-bucket/jobs/run1"


def test_gpu_table_matches_vertex_enum():
    names = {member.name for member in aiplatform_v1.AcceleratorType}
    assert set(checks.GPU_TYPES.values()) <= names
    assert checks.normalize_gpu_type("NVIDIA_TESLA_V100") == "nvidia-tesla-v100"


def test_fallback_architectures_match_registry():
    from trainer import models

    assert tuple(sorted(models.list_models())) == checks.FALLBACK_ARCHITECTURES
    assert checks.known_architectures() == checks.FALLBACK_ARCHITECTURES


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus", "0", "--gpu-type", "nvidia-tesla-t4"], "--gpu-type nvidia-tesla-t4 given with --gpus 0"),
        (["--arch", "resnet50"], "unknown --arch 'resnet50'; choose one of: inception_resnet_v2"),
        (["--job-dir", "/local/jobs"], "--job-dir must be a gs://bucket/path URL"),
        (["--data-dir", "data/records"], "--data-dir must be a gs://bucket/path URL"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--gpu-type", "voodoo-5"], "unknown GPU type 'voodoo-5'"),
        (["--tensorboard", "7"], "--tensorboard needs --service-account"),
        (["--service-account", "trainer"], "--service-account must be a service account e-mail"),
        (["--timeout", "soon"], "bad duration 'soon'"),
        (["--gpus", "two"], "argument --gpus: invalid int value: 'two'"),
    ],
)
def test_bad_flags_one_line_exit_2(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["vertex", *BASE, *flags, "--dry-run"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert message in lines[0]


def test_reserved_trainer_flag_after_dashes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["vertex", *BASE, "--dry-run", "--", "--strategy=one_device"])
    assert exit_info.value.code == 2
    assert "--strategy is set by the launcher" in capsys.readouterr().err


def test_cli_process_bad_flag_has_no_traceback():
    argv = ["vertex", *BASE, "--workers", "0", "--dry-run"]
    command = [sys.executable, "-m", "deploy.submit", *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["error: --workers must be at least 1, got 0"]


def test_trainer_accepts_generated_args_and_trial_flags(capsys):
    """The launcher's arguments and each trial's ``--<parameter_id>=<value>`` parse in trainer.task."""
    from trainer import task

    job = aiplatform_v1.HyperparameterTuningJob.from_json(_dry_run(capsys, "hptune", "--workers", "2"))
    args = list(job.trial_job_spec.worker_pool_specs[0].container_spec.args)
    trial = []
    for param in job.study_spec.parameters:
        value = param.discrete_value_spec.values[0] if param.discrete_value_spec.values else 0.1
        trial.append(f"--{param.parameter_id}={int(value) if param.discrete_value_spec.values else value}")
    parsed = vars(task.build_parser().parse_args([*args, *trial]))
    assert parsed["strategy"] == "multi_worker" and parsed["arch"] == "minception"
    assert parsed["learning_rate"] == 0.1 and parsed["dropout"] == 0.1 and parsed["batch_size"] == 32
