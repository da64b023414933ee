"""Orchestration of one training run; takes a frozen config, never reads flags.

strategy -> data -> build + compile in scope -> resume -> train (one or two
phases) -> evaluate the best weights -> reports and export. The training
itself is :class:`trainer.loop.DistributedLoop`; see docs/trainer.md for why.
"""

import json
import signal
import sys

from trainer import config as config_lib
from trainer import distribute, storage

PREEMPTED_EXIT_CODE = 143


class Preempted(Exception):  # noqa: N818 - a signal, not an error
    """Raised after a stop request (SIGTERM) once the training state is backed up."""


class JobDirError(ValueError):
    """The job dir holds a run that this configuration cannot continue."""


class StopFlag:
    """Set by SIGTERM; polled by the training loop between steps."""

    def __init__(self):
        self.requested = False

    def install(self):
        """Installs the SIGTERM handler (main thread only)."""

        def handler(signum, frame):
            self.requested = True

        signal.signal(signal.SIGTERM, handler)


def check_job_dir(outputs, config):
    """Refuses a job dir that holds a run of another architecture.

    Raises:
        JobDirError: When ``config.json`` of an earlier run disagrees.
    """
    text = outputs.read_text("job", config_lib.CONFIG_FILE)
    if text is None:
        return
    previous = json.loads(text)
    if previous.get("arch") != config.arch:
        raise JobDirError(
            f"job dir {config.job_dir} holds a run of architecture {previous.get('arch')!r}, "
            f"not {config.arch!r}; use another --job-dir"
        )


def check_job_dir_classes(outputs, config, classes):
    """Refuses a job dir whose earlier run trained on other classes.

    Resuming would restore a head of the wrong size (or silently mislabel
    classes), so a different class list is refused up front.

    Raises:
        JobDirError: When ``classes.json`` of an earlier run disagrees.
    """
    text = outputs.read_text("job", config_lib.CLASSES_FILE)
    if text is None:
        return
    previous = [c["wnid"] for c in json.loads(text)]
    current = [c["wnid"] for c in classes]
    if previous != current:
        raise JobDirError(
            f"job dir {config.job_dir} holds a run on {len(previous)} other classes "
            f"(this dataset has {len(current)}); use another --job-dir"
        )


def output_folders(config):
    """Returns ``name -> uri`` of every output folder of the run."""
    return {
        "job": config.job_dir,
        "logs": config.log_dir,
        "checkpoints": config.checkpoint_dir,
        "backup": config.backup_dir,
        "export": config.export_dir,
    }


def run(config, stop_flag=None):
    """Trains, evaluates and exports one model as ``config`` says.

    Args:
        config: A :class:`trainer.config.TrainConfig`.
        stop_flag: A :class:`StopFlag` (SIGTERM); a new one is installed when ``None``.

    Returns:
        The metrics dict written to ``metrics.json``.

    Raises:
        Preempted: Training stopped on request; the state is backed up.
        trainer.data.DataError: Bad dataset.
        JobDirError: The job dir holds an incompatible run.
    """
    # Logical devices must be configured before TensorFlow initializes.
    distribute.configure_devices(config.num_cpu_devices)
    import keras
    import tensorflow as tf

    from trainer import data

    chief = distribute.is_chief()
    outputs = storage.JobOutputs(output_folders(config), chief=chief)
    check_job_dir(outputs, config)
    # Collective ops (multi-worker) must be configured before any TensorFlow op runs.
    strategy = distribute.make_strategy(config.strategy, config.num_cpu_devices)
    info = data.load_metadata(config.data_dir)
    data.verify_data(info)
    check_job_dir_classes(outputs, config, info.metadata["classes"])
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch size {config.batch_size} is not divisible by {replicas} replicas")
    if chief:
        with open(outputs.local("job", config_lib.CONFIG_FILE), "w") as f:
            f.write(config.to_json())
        # Prediction needs class names even where the data dir is out of reach.
        with open(outputs.local("job", config_lib.CLASSES_FILE), "w") as f:
            json.dump(info.metadata["classes"], f, indent=1)
        outputs.sync()
    _log(f"strategy {distribute.strategy_name(strategy)} with {replicas} replicas; chief={chief}")
    if stop_flag is None:
        stop_flag = StopFlag()
        stop_flag.install()

    from trainer import session

    job = session.TrainingSession(config, strategy, info, outputs, chief, stop_flag)
    with data.translate_data_errors(info):
        result = job.train()
        if result.interrupted:
            job.save_interrupted(result)
            raise Preempted(f"stopped at epoch {result.epochs_completed} step {result.step_in_epoch}")
        metrics = job.finish(result)
    valid, test = metrics["valid"]["accuracy"], metrics["test"]["accuracy"]
    _log(f"done: valid accuracy {valid:.4f}, test accuracy {test:.4f}")
    return metrics


def _log(message):
    print(f"trainer: {message}", file=sys.stderr, flush=True)
