"""The trainer tests' shared reference run (built once per session, across workers: tests/shared.py),
and the processes fixture of the tests that start trainer processes themselves."""

import pytest

from tests import shared
from tests.trainer import helpers


def plateau_args(data_dir, job_dir):
    """The flags of the reference run of :func:`plateau_job`."""
    # A learning rate of 1e-6 cannot lower val_loss by ReduceLROnPlateau's 1e-4 in two steps: epoch 1
    # is a plateau (patience 1) whose full state is kept in checkpoints/plateau-epoch-0002.
    # --min-delta 100: no epoch after the first improves, so early stopping (patience 1) stops after
    # epoch 1 and restores epoch 0's weights, which are evaluated and saved.
    args = helpers.quick_args(data_dir, job_dir, 3, "--learning-rate", "1e-6", "--lr-plateau-patience", "1")
    # --validation-steps none: history's val_loss is the whole valid split, as the final evaluation.
    args += ["--min-delta", "100", "--early-stopping-patience", "1", "--validation-steps", "none"]
    # Keras' momentum and no precise statistics: the lagging moving averages make val_loss rise
    # while the weights barely move (the plateau). Seed 3's near-initial model predicts several
    # classes (other seeds' predict one class for every image).
    args += ["--explain", "false", "--bn-momentum", "0.99", "--precise-bn", "0", "--seed", "3"]
    # The calibration and TFLite tests read the temperature this run fits.
    return [*args, "--calibration", "temperature"]


@pytest.fixture(scope="session")
def plateau_job(sample_records, tmp_path_factory):
    """One quick run with a real plateau and early stop, shared by the evaluate, branch, calibration,
    TFLite and chance-level tests (its barely trained best model validates at chance).

    Read-only: a test that writes into the job dir copies it first.

    Returns:
        ``{"job_dir", "data_dir", "args", "stderr"}``: ``args`` are the run's flags (rerun them with
        another ``--job-dir`` to branch), ``stderr`` what it printed.
    """
    data_dir, _ = sample_records

    def build(folder):
        job_dir = f"{folder}/job"
        args = plateau_args(data_dir, job_dir)
        proc = helpers.run_cli(args)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return {"job_dir": job_dir, "data_dir": data_dir, "args": args, "stderr": proc.stderr}

    return shared.once(tmp_path_factory, "plateau-job", build)


@pytest.fixture
def processes():
    """Trainer processes of a test; any still running when it ends (a failed test) are killed."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
