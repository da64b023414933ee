"""Configuration resolution of the trainer: defaults < YAML/JSON < flags, env, validation, CLI errors."""

import json
import os
import re

import pytest

from tests.trainer import helpers
from trainer import config as config_lib
from trainer import distribute, models, task, train


def test_defaults_then_file_then_flags(tmp_path):
    defaults = models.get_defaults("minception")
    path = tmp_path / "settings.yaml"
    path.write_text("epochs: 7\nlearning-rate: 0.05\ndropout: 0.2\nbatch_size: 64\n")
    config = task.resolve(
        ["--data-dir", "d", "--job-dir", "j", "--arch", "minception", "--config", str(path), "--epochs", "3"],
        environ={},
    )
    assert config.epochs == 3  # flag beats file
    assert config.learning_rate == 0.05  # file beats defaults
    assert config.dropout == 0.2
    assert config.batch_size == 64
    assert config.policy == defaults.augmentation  # defaults table
    # The crop side waits for the dataset's images: 7/8 of them, the table's 56 for 64-px images.
    assert config.crop_size is None
    assert config.for_images(64).crop_size == defaults.input_size == 56
    assert config.early_stopping_patience == defaults.early_stopping_patience
    assert config.log_dir == "j/logs" and config.backup_dir == "j/backup"


def test_json_config_and_book_exercise_flags(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"arch": "inception_v1", "aux_loss_weight": 0.5}))
    config = task.resolve(
        [
            "--data-dir",
            "d",
            "--job-dir",
            "j",
            "--config",
            str(path),
            "--dropout",
            "0.8",
            "--min-delta",
            "0.01",
        ],
        environ={},
    )
    assert config.arch == "inception_v1"
    assert config.aux_loss_weight == 0.5
    assert config.dropout == 0.8 and config.min_delta == 0.01
    assert config.aux_dropout == models.get_defaults("inception_v1").aux_dropout


def test_vertex_environment_supplies_output_folders():
    environ = {
        "AIP_MODEL_DIR": "gs://b/model",
        "AIP_CHECKPOINT_DIR": "gs://b/ckpt",
        "AIP_TENSORBOARD_LOG_DIR": "gs://b/tb",
        "CLOUD_ML_TRIAL_ID": "3",
    }
    config = task.resolve(["--data-dir", "d", "--arch", "minception"], environ=environ)
    assert config.job_dir == "gs://b/model"
    assert config.export_dir == "gs://b/model"
    assert config.checkpoint_dir == "gs://b/ckpt" and config.backup_dir == "gs://b/ckpt/backup"
    assert config.log_dir == "gs://b/tb"
    assert config.hypertune_metric == "accuracy"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "resnet9000"], "unknown model"),
        (["--arch", "minception", "--dropout", "1.5"], "dropout"),
        (["--arch", "minception", "--batch-size", "0"], "batch_size"),
        (["--arch", "minception", "--lr-plateau-factor", "2"], "lr_plateau_factor"),
        (["--arch", "minception", "--frozen-epochs", "1"], "pretrained backbone"),
        (["--arch", "minception", "--backbone-size", "96"], "--backbone-size needs an architecture"),
    ],
)
def test_bad_values_exit_2_with_one_line(argv, message, capsys):
    code = task.main(["--data-dir", "d", "--job-dir", "j", *argv])
    _assert_one_error_line(code, capsys, message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: [1\n", "invalid YAML at line 3"),
        ("epochs: three\n", "epochs must be an integer, got 'three'"),
        ("dropout: high\n", "dropout must be a number or null"),
        ("explain: maybe\n", "explain must be true/false"),
    ],
)
def test_bad_config_file_exits_2_with_one_line(text, message, tmp_path, capsys):
    path = tmp_path / "settings.yaml"
    path.write_text("arch: minception\n" + text)
    code = task.main(["--data-dir", "d", "--job-dir", "j", "--config", str(path)])
    _assert_one_error_line(code, capsys, message)


def _assert_one_error_line(code, capsys, message):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_unknown_key_in_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("arch: minception\nepochz: 3\n")
    with pytest.raises(ValueError, match="epochz"):
        task.resolve(["--data-dir", "d", "--job-dir", "j", "--config", str(path)], environ={})


# Fields set only from a config file or the environment (Vertex AI), never by a flag.
_NOT_FLAGS = {"log_dir", "checkpoint_dir", "backup_dir", "export_dir", "hypertune_metric"}


def test_help_documents_every_flag(capsys):
    """Every configuration field has its flag in --help, and so does every flag docs/trainer.md lists."""
    with pytest.raises(SystemExit) as exit_info:
        task.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    fields = set(config_lib.field_names())
    assert fields >= _NOT_FLAGS
    expected = {
        "--" + name.replace("_", "-")
        for name in fields - _NOT_FLAGS - {"randaugment_ops", "randaugment_magnitude"}
    }
    expected.add("--randaugment")  # N,M sets both fields.
    assert expected <= flags, sorted(expected - flags)
    # ...and no flag sets something the configuration does not have.
    # --verbose acts before TensorFlow loads (contracts.quiet) and is no setting of the run.
    assert flags - {"--help", "--config", "--verbose"} - {f"--no-{f[2:]}" for f in flags} <= expected
    with open(os.path.join(helpers.ROOT, "docs", "trainer.md")) as f:
        page = f.read()
    # The trainer's own flags; other commands (trainer.evaluate, trainer.predict with an export) have
    # their sections between these two headings.
    page = page.split("## Evaluating a saved model")[0] + page.split("## Distribution design")[-1]
    documented = set(re.findall(r"`(--[a-z][a-z0-9-]*)", page))
    assert documented <= flags, sorted(documented - flags)
    assert expected | {"--config"} <= documented, sorted(expected | {"--config"} - documented)
    assert "GLOBAL batch size" in text


def test_config_round_trips_through_json():
    config = config_lib.TrainConfig(data_dir="d", job_dir="gs://b/j", arch="minception", epochs=2)
    again = config_lib.from_dict(json.loads(config.to_json()))
    assert again == config
    assert config.export_dir == "gs://b/j/export"


def test_strategy_choice():
    assert distribute.choose("auto", num_gpus=0, num_cpu_devices=0, num_tasks=1) == "default"
    assert distribute.choose("auto", num_gpus=2, num_cpu_devices=0, num_tasks=1) == "mirrored"
    assert distribute.choose("auto", num_gpus=0, num_cpu_devices=2, num_tasks=1) == "mirrored"
    assert distribute.choose("auto", num_gpus=4, num_cpu_devices=0, num_tasks=2) == "multi_worker"
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.choose("multi_worker", num_gpus=0, num_cpu_devices=0, num_tasks=1)
    cluster = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.cluster_size(cluster) == 2
    assert not distribute.is_chief(cluster)
    assert distribute.is_chief({**cluster, "task": {"type": "worker", "index": 0}})


def _main_error(argv, needle, capsys, monkeypatch):
    """Runs the trainer's ``main(argv)`` in-process: exit 2 and one ``error:`` line naming ``needle``.

    An exception that escaped ``main`` (a traceback in a real process) fails the test as an error.
    """
    monkeypatch.delenv("TF_CONFIG", raising=False)  # One local process, as on a workstation.
    _assert_one_error_line(task.main(argv), capsys, needle)


def test_cli_process_prints_one_error_line_and_no_traceback(tmp_path):
    """The one real process of the trainer CLI: nothing but ``main``'s line reaches stderr."""
    proc = helpers.run_cli(["--data-dir", str(tmp_path), "--job-dir", str(tmp_path / "j"), "--arch", "nope"])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and "unknown model" in lines[0], proc.stderr[-2000:]


def test_cli_missing_data_dir(tmp_path, capsys, monkeypatch):
    argv = ["--data-dir", str(tmp_path / "missing"), "--job-dir", str(tmp_path / "j"), "--arch", "minception"]
    _main_error(argv, "metadata", capsys, monkeypatch)


def test_cli_rejects_job_dir_of_other_arch_and_shard_mismatch(sample_records, tmp_path, capsys, monkeypatch):
    data_dir, metadata = sample_records
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.json").write_text(json.dumps({"arch": "inception_v1"}))
    argv = ["--data-dir", data_dir, "--job-dir", str(job), "--arch", "minception"]
    _main_error(argv, "inception_v1", capsys, monkeypatch)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(data_dir):
        (broken / name).write_bytes((open(os.path.join(data_dir, name), "rb")).read())
    metadata = dict(
        metadata, splits=dict(metadata["splits"], train={**metadata["splits"]["train"], "count": 999})
    )
    (broken / "metadata.json").write_text(json.dumps(metadata))
    argv = ["--data-dir", str(broken), "--job-dir", str(tmp_path / "j2"), "--arch", "minception"]
    _main_error(argv, "999", capsys, monkeypatch)


def test_cli_rejects_job_dir_trained_on_other_classes(sample_records, tmp_path, capsys, monkeypatch):
    data_dir, metadata = sample_records
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.json").write_text(json.dumps({"arch": "minception"}))
    other = [dict(c, wnid=f"n9{i:07d}") for i, c in enumerate(metadata["classes"][:3])]
    (job / "classes.json").write_text(json.dumps(other))
    argv = ["--data-dir", data_dir, "--job-dir", str(job), "--arch", "minception"]
    _main_error(argv, "3 other classes", capsys, monkeypatch)


# What a flag's help gives as its default: "(default 5)", "(default: on)", "(default 0.9, ...)".
_STATED_DEFAULT = re.compile(r"\(default:? ([\w.]+)[,)]")
_DEFAULT_WORDS = {"on": True, "off": False, "all": None}


@pytest.mark.parametrize("arch", models.list_models())
def test_defaults_are_the_ones_help_states(arch):
    """Each flag whose --help names a value as its default gets that value when the flag is left out."""
    config = task.resolve(["--data-dir", "d", "--job-dir", "j", "--arch", arch], environ={})
    checked = set()
    for action in task.build_parser()._actions:
        match = _STATED_DEFAULT.search(action.help or "")
        if not match:
            continue
        word = match.group(1)
        if word in _DEFAULT_WORDS:
            stated = _DEFAULT_WORDS[word]
        elif re.fullmatch(r"\d+(\.\d+)?", word):
            stated = float(word)
        else:
            stated = word
        assert getattr(config, action.dest) == stated, (action.option_strings, action.help)
        checked.add(action.dest)
    # The help of the Grad-CAM probes states their defaults: they are checked, not skipped.
    assert {"explain_every", "shortcut_probes", "explain", "export"} <= checked, checked


def test_explain_every_and_shortcut_probes(capsys):
    base = ["--data-dir", "d", "--job-dir", "j", "--arch", "minception"]
    config = task.resolve([*base, "--explain-every", "1", "--shortcut-probes", "2"], environ={})
    assert (config.explain_every, config.shortcut_probes) == (1, 2)
    for flag in ("--explain-every", "--shortcut-probes"):
        code = task.main([*base, flag, "0"])
        _assert_one_error_line(code, capsys, f"{flag[2:].replace('-', '_')} must be >= 1, got 0")


def test_export_is_on_unless_turned_off():
    base = ["--data-dir", "d", "--job-dir", "j", "--arch", "minception"]
    assert task.resolve(base, environ={}).export is True
    assert task.resolve([*base, "--export", "false"], environ={}).export is False
    assert task.resolve([*base, "--no-export"], environ={}).export is False


@pytest.mark.parametrize(("image_size", "crop_size"), [(64, 56), (128, 112), (224, 196), (96, 84), (8, 7)])
def test_the_crop_is_seven_eighths_of_the_images_unless_set(image_size, crop_size):
    """The book's 56 of 64 as a fraction: 128-px images keep 112 px, not a 56-px corner (19%)."""
    base = ["--data-dir", "d", "--job-dir", "j", "--arch", "minception"]
    config = task.resolve(base, environ={}).for_images(image_size)
    assert config.policy == "crop" and config.crop_size == crop_size
    # What config.json holds is the resolved side, and it reads back as the same configuration.
    saved = json.loads(config.to_json())
    assert saved["crop_size"] == crop_size and config_lib.from_dict(saved) == config
    # Minception's input is the crop policy's output, so the model takes the resolved crop.
    options = train.model_build_options(config, models.get_defaults("minception"), image_size)
    assert options["input_size"] == crop_size


def test_an_explicit_crop_size_wins_and_must_fit_the_images():
    base = ["--data-dir", "d", "--job-dir", "j", "--arch", "minception", "--crop-size", "48"]
    config = task.resolve(base, environ={})
    assert config.crop_size == 48 and config.for_images(128).crop_size == 48
    options = train.model_build_options(config.for_images(128), models.get_defaults("minception"), 128)
    assert options["input_size"] == 48
    with pytest.raises(ValueError, match=r"crop_size must be in \[1, image_size=32\], got 48"):
        config.for_images(32)
    with pytest.raises(ValueError, match="crop_size must be >= 1 or unset, got 0"):
        task.resolve([*base[:-1], "0"], environ={})


def test_class_weight_flag():
    base = ["--data-dir", "d", "--job-dir", "j", "--arch", "minception"]
    assert task.resolve(base, environ={}).class_weight == "none"
    config = task.resolve([*base, "--class-weight", "balanced"], environ={})
    assert config.class_weight == "balanced" and config.hparams()["class_weight"] == "balanced"
    with pytest.raises(ValueError, match="class_weight must be one of none, balanced; got 'inverse'"):
        task.resolve([*base, "--class-weight", "inverse"], environ={})


def test_arch_defaults_to_minception_with_its_defaults_and_a_file_or_flag_overrides_it(tmp_path):
    config = task.resolve(["--data-dir", "d", "--job-dir", "j"], environ={})
    assert config.arch == task.DEFAULT_ARCH == "minception"
    assert config.epochs == task.architecture_defaults("minception")["epochs"]
    path = tmp_path / "c.yaml"
    path.write_text("arch: inception_v1\n")
    from_file = task.resolve(["--data-dir", "d", "--job-dir", "j", "--config", str(path)], environ={})
    assert from_file.arch == "inception_v1"
    assert from_file.epochs == task.architecture_defaults("inception_v1")["epochs"]
    flag = ["--data-dir", "d", "--job-dir", "j", "--config", str(path), "--arch", "minception"]
    assert task.resolve(flag, environ={}).arch == "minception"
