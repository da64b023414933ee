"""contracts.quiet: the command lines print only their own lines on stderr unless -v/--verbose."""

import os
import re
import subprocess
import sys
import time

import pytest

from contracts import quiet, voice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# TensorFlow's start-up lines (absl's preamble, C++ log lines with their I/W/E/F prefix).
NOISE = re.compile(r"cudart_stub|cuInit|absl::InitializeLog|oneDNN|cpu_feature_guard|^[IWEF]\d{4} ")
# Lines the commands print themselves: one failure line, or progress in the one voice.
OURS = re.compile(f"error: |{voice.LINE_PATTERN.pattern}")

NO_DRIVER_LINE = (
    "E0000 00:00:1796135905.850046     408 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
    "error: Failed call to cuInit: UNKNOWN ERROR (303)"
)
ABSL_LINE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN_LINE = (
    "I0000 00:00:1796154838.382731   18638 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different "
    "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`."
)
CUDART_LINE = (
    "I0000 00:00:1796135023.895707   25441 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used."
)


@pytest.fixture
def meta_path(monkeypatch):
    """sys.meta_path as it was before the test (quiet_tensorflow may add its import filter)."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    return sys.meta_path


def test_sets_the_variables(meta_path):
    environ = {}
    assert quiet.quiet_tensorflow([], environ) == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "2"}


def test_keeps_a_users_value(meta_path):
    environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert quiet.quiet_tensorflow(["--data-dir", "d"], environ) == {}
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "0"}


@pytest.mark.parametrize("argv", [["-v"], ["--data-dir", "d", "--verbose"]])
def test_verbose_sets_nothing(meta_path, argv):
    before = list(meta_path)
    environ = {}
    assert quiet.quiet_tensorflow(argv, environ) == {}
    assert environ == {} and sys.meta_path == before


def test_verbose_after_double_dash_is_an_argument(meta_path):
    assert quiet.quiet_tensorflow(["--", "-v"], {}) == {"TF_CPP_MIN_LOG_LEVEL": "2"}


def test_filter_drops_only_the_lines_no_setting_reaches():
    assert quiet.is_startup_noise(ABSL_LINE + "\n")
    assert quiet.is_startup_noise(CUDART_LINE.encode())
    assert quiet.is_startup_noise(NO_DRIVER_LINE)
    assert quiet.is_startup_noise(ONEDNN_LINE + "\r\n")
    kept = [
        "error: /x/model.keras: model not found",
        # A driver that is there but fails is a real error.
        NO_DRIVER_LINE.replace("UNKNOWN ERROR (303)", "CUDA_ERROR_UNKNOWN (999)"),
        "E0000 00:00:1796135029.643753   25441 cuda_platform.cc:52] failed call to cuInit: INTERNAL",
        # Hidden by TF_CPP_MIN_LOG_LEVEL instead, so -v and a user's level keep working.
        "I0000 00:00:1796135024.049258   25441 cpu_feature_guard.cc:227] This TensorFlow binary is",
        "some text " + ABSL_LINE,
        ONEDNN_LINE.replace("are on", "are off"),
    ]
    assert not any(quiet.is_startup_noise(line) for line in kept)


def test_filter_passes_every_other_line_even_after_a_crash(tmp_path):
    """The filter is a separate process: what a module wrote before aborting its import still shows."""
    (tmp_path / "noisy.py").write_text(
        "import os\n"
        f"os.write(2, {(ABSL_LINE + chr(10) + CUDART_LINE + chr(10)).encode()!r})\n"
        "os.write(2, b'a real line\\n')\n"
        "os.abort()\n"
    )
    program = (
        "import sys; from contracts import quiet; "
        "sys.meta_path.insert(0, quiet._FilterWhileImporting('noisy')); import noisy"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, str(tmp_path)])}
    # A file, not a pipe: subprocess.run's pipe would also wait for the filter to end.
    with open(tmp_path / "err", "w+") as err:
        result = subprocess.run([sys.executable, "-c", program], stderr=err, env=env, cwd=ROOT, timeout=60)
        assert result.returncode != 0
        for _ in range(100):  # The filter may still be writing after the abort.
            err.seek(0)
            text = err.read()
            if "a real line" in text:
                break
            time.sleep(0.05)
    assert text.splitlines() == ["a real line"]


def test_the_commands_accept_verbose(tmp_path, monkeypatch):
    """In-process where the parser needs no TensorFlow; explain.task's -v runs below."""
    from preprocessing import flags, sample
    from trainer import evaluate, predict
    from trainer import task as trainer_task

    assert evaluate.build_parser().parse_args(["--model", "m", "--data-dir", "d", "-v"]).verbose
    assert predict.build_parser().parse_args(["--model", "m", "x.jpg", "--verbose"]).verbose
    assert flags.build_parser().parse_args(["--raw-dir", "r", "--output-dir", "o", "-v"]).verbose
    # The trainer's flag is no setting of the run (TrainConfig refuses unknown keys).
    monkeypatch.setattr(trainer_task, "architecture_defaults", lambda arch: {})
    config = trainer_task.resolve(["--arch", "minception", "--data-dir", "d", "--job-dir", "j", "-v"], {})
    assert config.arch == "minception"
    argv = ["--out", str(tmp_path / "s"), "--classes", "2", "--train-per-class", "1", "--val-per-class", "1"]
    assert sample.main([*argv, "--test-images", "0", "-v"]) == 0


def _environment():
    """os.environ without any TensorFlow or glog setting: the commands must bring their own."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("TF_", "GLOG_"))}
    env["PYTHONPATH"] = ROOT
    return env


# A start-up line as TensorFlow's libraries write it while ``import tensorflow`` runs. Whether
# this machine's TensorFlow writes any depends on its CPU and drivers, so each child writes this
# one itself, at the same moment: the filter must drop it, and -v must let it through.
STARTUP_LINE = CUDART_LINE

# Runs a command as ``python -m`` does, then prints whether TensorFlow was imported (a path that
# never imports it would pass vacuously). While TensorFlow's package imports its first submodule,
# the child writes STARTUP_LINE on file descriptor 2, as a static initialiser does.
_RUN = (
    "import atexit, os, runpy, sys\n"
    "class StartUpLine:\n"
    "    written = False\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.startswith('tensorflow.') and not self.written:\n"
    "            self.written = True\n"
    f"            os.write(2, {(STARTUP_LINE + chr(10)).encode()!r})\n"
    "sys.meta_path.insert(0, StartUpLine())\n"
    "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules))\n"
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)\n"
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each command's quickest path that imports TensorFlow, all started at once: ``{name: result}``."""
    tmp = tmp_path_factory.mktemp("quiet")
    missing = str(tmp / "missing")
    empty = tmp / "empty"  # A data dir without metadata.json.
    empty.mkdir()
    train = ["--arch", "minception", "--data-dir", str(empty), "--job-dir", str(tmp / "j")]
    explain = ["explain.task", "--model", missing, "--data-dir", missing, "--logdir", str(tmp / "l")]
    commands = {
        "explain.task": explain,
        "trainer.evaluate": ["trainer.evaluate", "--model", missing, "--data-dir", missing],
        "trainer.predict": ["trainer.predict", "--model", missing, str(tmp / "img.jpg")],
        "preprocessing.task": ["preprocessing.task", "--raw-dir", missing, "--output-dir", str(tmp / "o")],
        "trainer.task": ["trainer.task", *train],
        "verbose": [*explain, "-v"],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-c", _RUN, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_environment(),
            cwd=ROOT,
        )
        for name, argv in commands.items()
    }
    results = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        results[name] = (process.returncode, out, err)
    return results


@pytest.mark.parametrize(
    "name", ["explain.task", "trainer.evaluate", "trainer.predict", "preprocessing.task", "trainer.task"]
)
def test_stderr_holds_only_our_lines(runs, name):
    code, out, err = runs[name]
    assert code == 2, err
    assert out.splitlines()[-1] == "tensorflow imported: True"
    lines = err.splitlines()
    assert not [line for line in lines if NOISE.search(line)], err
    assert lines and all(OURS.match(line) for line in lines), err
    assert lines[-1].startswith("error: ")


def test_verbose_brings_the_noise_back(runs):
    code, out, err = runs["verbose"]
    assert code == 2 and out.splitlines()[-1] == "tensorflow imported: True", err
    lines = err.splitlines()
    assert STARTUP_LINE in lines, err
    assert lines[-1].startswith("error: ")
    # The same command without -v: the line written during the import is dropped.
    quiet_code, _, quiet_err = runs["explain.task"]
    assert quiet_code == 2 and STARTUP_LINE not in quiet_err.splitlines(), quiet_err
