"""Evaluate a saved model on one split: ``python -m trainer.evaluate --model J --data-dir D --split test``.

What timm's ``validate.py`` is to its users: any saved model, any labelled
split, the trainer's own numbers.

``--model`` takes a job dir ``J`` (local or ``gs://``) whose ``model.keras``
is evaluated, or a ``.keras`` file. The evaluation transform comes from
:func:`contracts.jobdir.load`, the one place that derives it (``trainer.predict``
uses it too): the job's ``config.json`` (``policy``, ``crop_size``) when there
is one; for a bare ``.keras`` file, the model's input size against the
dataset's image size (an input smaller than the images: the centre crop to
the input side; equal: the images as they are).

The evaluation is the trainer's final evaluation:
:func:`trainer.evaluation.evaluate_split` over a
:class:`trainer.loop.DistributedLoop` (default strategy), so ``--split test``
of a job dir reproduces its ``metrics.json`` and ``per_class_accuracy.csv``.
``--tta flip`` averages the softmax of each image and its left-right mirror.

Prints two summary lines (top-1, top-5, loss and the macro precision, recall
and F1; the most confused pairs) and writes JSON (``--output``; default
``J/evaluation_<split>[_tta-flip].json``, or ``<stem>_evaluation_<split>...json``
beside a ``.keras`` file) with ``accuracy`` (top-1), ``top5_accuracy``,
``loss``, ``count``, ``macro_precision``, ``macro_recall``, ``macro_f1``,
``most_confused``, ``never_predicted`` (as ``metrics.json``), ``per_class``
(the columns of ``per_class_accuracy.csv``), ``confusion`` (rows: true labels) and
``calibration`` (:func:`trainer.calibration.measure`: the 15-bin ECE and NLL of the
softmax, and after the job's fitted temperature when it has one and
``--calibration`` is ``temperature``). Bad
input (a missing model, a model of another class count or input size, an
unknown split, a bad flag value) ends with one ``error:`` line on stderr and
exit code 2.
"""

import dataclasses
import os
import sys

# First, before anything imports TensorFlow: it reads its log settings once, when it loads.
from contracts import quiet

if __name__ == "__main__":
    quiet.quiet_tensorflow()

from contracts import cli, jobdir, storage
from trainer import calibration, class_metrics

SPLITS = ("valid", "test")
TTA_MODES = ("none", "flip")
# Batch size of a bare .keras file (a job dir's default is its config.json's batch size).
DEFAULT_BATCH_SIZE = 64


def build_parser():
    """Returns the command-line parser."""
    parser = cli.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Job dir (with model.keras) or a .keras file.")
    parser.add_argument(
        "--data-dir", required=True, help="Dataset folder (or gs:// prefix) with metadata.json."
    )
    parser.add_argument("--split", default="test", choices=SPLITS, help="Split to evaluate (default: test).")
    parser.add_argument(
        "--tta", default="none", choices=TTA_MODES, help="Test-time augmentation: flip averages mirrors."
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"Batch size (default: the job's, or {DEFAULT_BATCH_SIZE} for a .keras file).",
    )
    parser.add_argument("--output", help="JSON file to write (default: in the job dir / beside the file).")
    parser.add_argument(
        "--calibration",
        default="temperature",
        choices=calibration.MODES,
        help="temperature: also report the calibration error after the job's fitted temperature "
        "(default); none: the raw softmax's only.",
    )
    quiet.add_verbose_flag(parser)
    return parser


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The resolved command line of :func:`main`."""

    model: str
    data_dir: str
    split: str = "test"
    tta: str = "none"
    batch_size: int | None = None
    output: str | None = None
    calibration: str = "temperature"

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {SPLITS}, got {self.split!r}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"--tta must be one of {TTA_MODES}, got {self.tta!r}")
        if self.calibration not in calibration.MODES:
            raise ValueError(f"--calibration must be one of {calibration.MODES}, got {self.calibration!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")


def is_model_file(model):
    """Whether ``--model`` names a ``.keras`` file (else a job dir), as :func:`contracts.jobdir.load` says."""
    return str(model).rstrip("/").endswith(".keras")


def default_output(model, split, tta):
    """Returns the default JSON path: in the job dir, or beside a ``.keras`` file prefixed with its stem."""
    model = str(model).rstrip("/")
    name = jobdir.EVALUATION_FILE.format(split=split, tta="" if tta == "none" else f"_tta-{tta}")
    if not is_model_file(model):
        return storage.join(model, name)
    if storage.is_gcs(model):
        folder, _, file_name = model.rpartition("/")
    else:
        folder, file_name = os.path.split(model)
    stem = file_name[: -len(".keras")]
    return storage.join(folder or ".", f"{stem}_{name}")


def run(config, out=None):
    """Evaluates ``config.model`` on ``config.split``; writes the JSON and returns its dict.

    Raises:
        ValueError: Bad input (``contracts.dataset.DataError``, ``contracts.jobdir.ModelLoadError``,
            ``contracts.jobdir.JobDirError``, a model that does not fit the dataset).
    """
    out = out or sys.stdout
    from contracts import dataset, record_check
    from trainer import evaluation

    model_path = str(config.model).rstrip("/")
    job_dir = None if is_model_file(model_path) else model_path
    output = config.output or default_output(model_path, config.split, config.tta)
    if not storage.is_gcs(output):
        cli.check_writable_dir(os.path.dirname(os.path.abspath(output)), "--output")
    info = dataset.load_metadata(config.data_dir)
    if info.split_counts.get(config.split, 0) < 1:
        other = next(split for split in SPLITS if split != config.split)
        raise ValueError(f"{config.data_dir}: split {config.split!r} has no images; try --split {other}")
    record_check.check_records(info, splits=(config.split,))  # One error naming a bad record's shard.
    predictor = jobdir.load(model_path, data_dir=config.data_dir)
    _check_fits(model_path, job_dir, predictor, info)
    batch_size = config.batch_size
    if batch_size is None:
        batch_size = (jobdir.read_config(job_dir) if job_dir else {}).get("batch_size", DEFAULT_BATCH_SIZE)
    metrics, confusion, outputs = _evaluate(predictor, info, config.split, config.tta, int(batch_size))
    # The job's fitted temperature (none for a bare .keras file or --calibration none).
    temperature = predictor.temperature if config.calibration == "temperature" else None
    metrics["calibration"] = calibration.measure(*outputs, temperature)
    result = {
        "model": model_path,
        "data_dir": config.data_dir,
        "split": config.split,
        "tta": config.tta,
        "policy": predictor.policy,
        "crop_size": predictor.crop_size,
        "input_size": predictor.input_size,
        "batch_size": int(batch_size),
        **metrics,
        "per_class": evaluation.per_class(confusion, info.wnids, info.class_names),
        "confusion": confusion.tolist(),
    }
    storage.write_bytes(output, (jobdir.to_json(result, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    out.write(summary_lines(config.split, metrics, info.class_names))
    result["output"] = output
    return result


def summary_lines(split, metrics, class_names):
    """Returns the two lines printed for a split's ``metrics``: the numbers, then the most confused pairs."""
    return (
        f"evaluate: {split} top-1 {metrics['accuracy']:.4f} top-5 {metrics['top5_accuracy']:.4f} "
        f"loss {metrics['loss']:.4f} macro precision {metrics['macro_precision']:.4f} "
        f"recall {metrics['macro_recall']:.4f} f1 {metrics['macro_f1']:.4f} on {metrics['count']} images\n"
        f"evaluate: {class_metrics.describe_confused(split, metrics, class_names)}\n"
    )


def _check_fits(model_path, job_dir, predictor, info):
    """Refuses a model of other classes, or one whose input the dataset's images cannot give."""
    if job_dir:
        classes_file = storage.join(job_dir, jobdir.CLASSES_FILE)
        if storage.exists(classes_file):
            text = storage.read_bytes(classes_file).decode("utf-8")
            jobdir.check_classes(job_dir, text, info.metadata["classes"])
    num_classes = int(predictor.model.outputs[0].shape[-1])
    if num_classes != info.num_classes:
        raise ValueError(
            f"{model_path}: the model has {num_classes} classes, the dataset {info.num_classes} "
            f"({info.source_dir})"
        )
    if predictor.image_size != info.image_size:
        raise ValueError(
            f"{model_path}: the model takes {predictor.input_size}px images, larger than the "
            f"dataset's {info.image_size}px"
        )


def _evaluate(predictor, info, split, tta, batch_size):
    """Runs the trainer's final evaluation code over ``split``.

    Returns ``(metrics, confusion, (probabilities, labels))``, the last the per-image softmax
    the calibration error is measured on.
    """
    import tensorflow as tf

    from contracts import dataset
    from trainer import data, evaluation, loop

    strategy = tf.distribute.get_strategy()
    model = predictor.model
    eval_model = evaluation.flip_averaged(model) if tta == "flip" else model
    evaluator = loop.DistributedLoop(
        strategy, model, eval_model, num_classes=info.num_classes, global_batch_size=batch_size
    )

    def make(input_context):
        return data.make_dataset(
            info,
            split,
            global_batch_size=batch_size,
            training=False,
            policy=predictor.policy,
            crop_size=predictor.crop_size,
            input_context=input_context,
        )

    with dataset.translate_data_errors(info, splits=(split,)):
        metrics, confusion = evaluation.evaluate_split(
            evaluator, strategy.distribute_datasets_from_function(make), info.class_names
        )
        return metrics, confusion, evaluation.split_probabilities(eval_model, make(None))


def main(argv=None):
    """Command-line entry point; returns the exit code (0 done, 2 bad input)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # A usage error (its one line already printed) or --help.
        return stop.code
    try:
        config = EvaluateConfig(
            model=args.model,
            data_dir=args.data_dir,
            split=args.split,
            tta=args.tta,
            batch_size=args.batch_size,
            output=args.output,
            calibration=args.calibration,
        )
        run(config)
    except (
        ValueError,
        OSError,
    ) as error:  # DataError, ModelLoadError, JobDirError, OutputPathError, storage.
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
