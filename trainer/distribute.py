"""Strategy selection, logical CPU devices and the ``TF_CONFIG`` cluster.

Call :func:`configure_devices` before anything initializes TensorFlow's
runtime (creating a tensor does), then :func:`make_strategy`.
"""

import functools
import json
import os
import shutil
import signal
import tempfile

import tensorflow as tf

from contracts import lease


def configure_devices(num_cpu_devices):
    """Splits the first CPU into ``num_cpu_devices`` logical devices.

    This lets a mirrored strategy run over several CPU "replicas" on a machine
    without GPUs. It must run before TensorFlow initializes its devices.

    Args:
        num_cpu_devices: Number of logical CPU devices; 0 or 1 leaves the CPU as is.

    Raises:
        RuntimeError: If TensorFlow's devices are already initialized with another split.
    """
    if num_cpu_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    config = [tf.config.LogicalDeviceConfiguration() for _ in range(num_cpu_devices)]
    try:
        tf.config.set_logical_device_configuration(cpu, config)
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) != num_cpu_devices:
            raise RuntimeError(f"cannot split the CPU after TensorFlow initialized: {error}") from error


def tf_config():
    """Returns the parsed ``TF_CONFIG`` environment variable (``{}`` when unset).

    Raises:
        ValueError: Not JSON, or not the shape :func:`check_tf_config` describes.
    """
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
    return check_tf_config(config)


# What a TF_CONFIG looks like, for every message about one that does not.
TF_CONFIG_SHAPE = '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
# A task type TensorFlow runs outside the cluster's list (a side-car evaluator).
_OUTSIDE_CLUSTER = ("evaluator",)


def check_tf_config(config):
    """Checks the shape of a parsed ``TF_CONFIG``; returns it with the task index as an ``int``.

    The cluster maps task types to lists of ``host:port`` addresses; the task,
    required when the cluster names any, is a type of the cluster and an index
    into its list. Keys the trainer does not use (``environment``, Vertex AI's
    ``job``) pass. A wrong shape would otherwise be an ``AttributeError`` deep in
    the run, or, for an index ``"0"`` that TensorFlow reads as 0, a cluster
    whose worker 0 does not know it is the chief and nobody writes the outputs.

    Raises:
        ValueError: Naming what is wrong, with the expected shape.
    """
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object like {TF_CONFIG_SHAPE}, got {_brief(config)}")
    # null is absent, as an empty object is; an empty list is a wrong shape.
    cluster = {} if config.get("cluster") is None else config["cluster"]
    if not isinstance(cluster, dict):
        raise ValueError(f"TF_CONFIG cluster must map task types to address lists, got {_brief(cluster)}")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and a for a in addresses):
            raise ValueError(
                f"TF_CONFIG cluster {kind!r} must be a list of host:port, got {_brief(addresses)}"
            )
    task = {} if config.get("task") is None else config["task"]
    if not isinstance(task, dict):
        raise ValueError(f"TF_CONFIG task must be an object with a type and an index, got {_brief(task)}")
    if not task:
        if any(cluster.values()):
            raise ValueError("TF_CONFIG names a cluster but no task (this process's type and index)")
        return {**config, "cluster": cluster, "task": task}
    kind, index = task.get("type"), task.get("index")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"TF_CONFIG task type must be a task type such as 'worker', got {_brief(kind)}")
    if isinstance(index, str) and index.strip().isdigit():
        index = int(index)  # TensorFlow reads it with int(); so must is_chief.
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError(f"TF_CONFIG task index must be an integer, got {_brief(index)}")
    if kind in cluster:
        if not 0 <= index < len(cluster[kind]):
            raise ValueError(
                f"TF_CONFIG task index {index} is out of range: the cluster has {len(cluster[kind])} "
                f"{kind!r} task(s)"
            )
    elif cluster and kind not in _OUTSIDE_CLUSTER:
        raise ValueError(f"TF_CONFIG task type {kind!r} is not in the cluster ({', '.join(cluster)})")
    return {**config, "cluster": cluster, "task": {**task, "index": index}}


def _brief(value):
    """A value for a message, cut to a line."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def cluster_size(config=None):
    """Returns the number of tasks (chief + workers) named in ``TF_CONFIG``."""
    config = tf_config() if config is None else config
    cluster = config.get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def task_identity(config=None):
    """Returns ``(task_type, task_index)`` of this process (``(None, None)`` without a cluster)."""
    config = tf_config() if config is None else config
    task = config.get("task", {})
    return task.get("type"), task.get("index")


def is_chief(config=None):
    """Returns whether this process writes the job's outputs.

    The chief is the ``chief`` task, or worker 0 when the cluster has no chief;
    a single process is always the chief.
    """
    config = tf_config() if config is None else config
    if cluster_size(config) <= 1:
        return True
    task_type, task_index = task_identity(config)
    if task_type == "chief":
        return True
    has_chief = bool(config.get("cluster", {}).get("chief"))
    return task_type == "worker" and task_index == 0 and not has_chief


def holding_job_dir_lease(warn):
    """Decorates ``run(config, ...)``: the chief holds the lease of ``config.job_dir`` while it runs.

    Two runs on one job dir would interleave their backups; the second is refused
    (:class:`contracts.lease.LeaseHeldError`, a ``ValueError``), a dead holder's lease is
    taken over with one ``warn`` line, and the lease is given back however the run
    ends (a SIGTERM becomes the trainer's ``Preempted``). The workers of a cluster
    share the chief's job dir and take none.
    """

    def decorate(run):
        @functools.wraps(run)
        def holding(config, *args, **kwargs):
            with lease.held(config.job_dir, chief=is_chief(), warn=warn):
                return run(config, *args, **kwargs)

        return holding

    return decorate


def choose(name, *, num_gpus, num_cpu_devices, num_tasks):
    """Resolves ``auto`` and checks the requested strategy name.

    Args:
        name: ``auto``, ``one_device``, ``mirrored`` or ``multi_worker``.
        num_gpus: Number of local GPUs.
        num_cpu_devices: Number of logical CPU devices requested.
        num_tasks: Number of tasks in ``TF_CONFIG``.

    Returns:
        ``"default"``, ``"one_device"``, ``"mirrored"`` or ``"multi_worker"``.
    """
    if name == "auto":
        if num_tasks > 1:
            return "multi_worker"
        if num_gpus > 1 or num_cpu_devices > 1:
            return "mirrored"
        return "default"
    if name == "multi_worker" and num_tasks <= 1:
        raise ValueError("strategy multi_worker needs TF_CONFIG naming more than one task")
    return name


def make_strategy(name, num_cpu_devices=0):
    """Creates the ``tf.distribute`` strategy for ``name``.

    ``auto`` picks ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more
    than one task, ``MirroredStrategy`` over all local GPUs when there are
    several (or over the logical CPU devices of ``--num-cpu-devices``), else
    the default strategy.

    Returns:
        A ``tf.distribute.Strategy``.
    """
    gpus = tf.config.list_physical_devices("GPU")
    kind = choose(name, num_gpus=len(gpus), num_cpu_devices=num_cpu_devices, num_tasks=cluster_size())
    if kind == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if kind == "mirrored":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        devices = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
        # HierarchicalCopyAllReduce needs NCCL-capable GPUs; CPUs reduce by copying.
        cross = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross)
    if kind == "one_device":
        device = "/gpu:0" if gpus else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    return tf.distribute.get_strategy()


# The words of ``--strategy`` (and of deploy/'s job specs) by tf.distribute
# class name, so logs and metrics.json never show a private class such as
# ``_DefaultDistributionStrategy``. MultiWorkerMirroredStrategy's class is
# ``CollectiveAllReduceStrategy``; both names map.
STRATEGY_NAMES = {
    "_DefaultDistributionStrategy": "default",
    "OneDeviceStrategy": "one_device",
    "MirroredStrategy": "mirrored",
    "MultiWorkerMirroredStrategy": "multi_worker",
    "CollectiveAllReduceStrategy": "multi_worker",
}


def public_name(class_name):
    """Returns the public word for a ``tf.distribute`` strategy class name.

    Args:
        class_name: A strategy's class name, e.g. ``"MirroredStrategy"``.

    Returns:
        ``"default"``, ``"one_device"``, ``"mirrored"`` or ``"multi_worker"``;
        ``None`` for a class the trainer never creates.
    """
    return STRATEGY_NAMES.get(class_name)


def strategy_name(strategy):
    """Returns the public name of ``strategy`` for logs and ``metrics.json``.

    The words are those of ``--strategy`` and deploy/: ``default`` (one device,
    no distribution), ``one_device``, ``mirrored`` or ``multi_worker``.
    """
    # The nearest known class along the MRO, so a subclass keeps its family's name.
    for cls in type(strategy).__mro__:
        name = public_name(cls.__name__)
        if name is not None:
            return name
    # A strategy the trainer never makes (e.g. TPUStrategy): its class name says what it is.
    return type(strategy).__name__


def worker_dir(directory, chief):
    """Returns where this worker writes ``directory``'s files.

    Saving a distributed checkpoint is collective: every worker must save, but
    only the chief's copy is kept. Non-chief workers write to a temporary
    folder that :func:`cleanup_worker_dir` deletes (the standard
    MultiWorkerMirroredStrategy pattern).
    """
    if chief:
        return directory
    return tempfile.mkdtemp(prefix="workertemp-")


def cleanup_worker_dir(path, chief):
    """Deletes a non-chief worker's temporary folder."""
    if not chief:
        shutil.rmtree(path, ignore_errors=True)


class StopFlag:
    """Set by SIGTERM (a preemption notice); polled by the training loop between steps."""

    def __init__(self):
        self.requested = False

    def install(self):
        """Installs the SIGTERM handler (main thread only); returns the flag."""

        def handler(signum, frame):
            self.requested = True

        signal.signal(signal.SIGTERM, handler)
        return self


def stop_check(strategy, stop_flag, every_steps=10):
    """Returns ``stop_requested(at_epoch_end) -> bool`` for the training loop.

    One worker stops as soon as the flag is set. Workers of a cluster must stop
    at the same step (saving the state is collective), so they agree on the flag
    with a scalar all-reduce every ``every_steps`` steps and at every epoch end,
    and ignore it in between: a SIGTERM on any worker stops all of them within
    ``every_steps`` steps. The loop calls the check after every step on every
    worker, so counting the calls here puts every worker's all-reduce at the
    same steps.

    Args:
        strategy: The run's strategy.
        stop_flag: This process's :class:`StopFlag`.
        every_steps: Steps between two agreements in a cluster (>= 1).
    """
    if cluster_size() <= 1:
        return lambda at_epoch_end: stop_flag.requested
    steps = 0

    # A tf.function: run eagerly, every collective of MultiWorkerMirroredStrategy is set up anew.
    @tf.function(autograph=False)
    def all_reduce(flag):
        return strategy.reduce("SUM", strategy.run(tf.identity, args=(flag,)), axis=None)

    def agreed(at_epoch_end):
        nonlocal steps
        if not at_epoch_end:
            steps += 1
            if steps % every_steps:
                return False
        value = all_reduce(tf.constant(1.0 if stop_flag.requested else 0.0))
        return bool(value.numpy() > 0)

    return agreed
