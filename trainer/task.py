"""Command line of the trainer: ``python -m trainer.task --data-dir D --job-dir J --arch NAME``.

Configuration is resolved once, lowest precedence first: the architecture's
defaults (``models.get_defaults``), the ``--config`` YAML/JSON file, then the
flags given on the command line. Vertex AI's ``AIP_MODEL_DIR``,
``AIP_CHECKPOINT_DIR`` and ``AIP_TENSORBOARD_LOG_DIR`` supply the output
folders when set. The resolved configuration is written to ``J/config.json``.
Bad input (an output folder that cannot be written, named by its flag or
``AIP_*`` variable, a wrong-shaped ``TF_CONFIG`` and a job dir another run
holds included) ends with one line on stderr and exit code 2; a SIGTERM
ends with the training state backed up and exit code 143 so the cluster
restarts the job; a loss that becomes NaN or infinite ends with one line and
exit code 3, the last good backup kept.
"""

import argparse
import json
import os
import sys

# First, before anything imports TensorFlow: it reads its log settings once, when it loads.
from contracts import quiet

if __name__ == "__main__":
    quiet.quiet_tensorflow()

from contracts import cli
from trainer import config as config_lib
from trainer import environment, stages

# The architecture without --arch: the compact one, trained from scratch, no weights to download.
DEFAULT_ARCH = "minception"
# Keys of ArchDefaults that map to a differently named config field.
_DEFAULT_FIELDS = {"augmentation": "policy"}


def _one_of(choices):
    # The choices are checked once, by TrainConfig (flags, YAML and AIP_* alike);
    # the parser only shows them.
    return "{" + ",".join(choices) + "}"


def _optional_int(text):
    return None if str(text).lower() in ("none", "") else int(text)


def _batches_or_auto(text):
    return None if str(text).lower() == "auto" else int(text)


def _randaugment(text):
    """``N,M`` -> ``(ops, magnitude)``; ``0`` or ``off`` -> ``(0, None)``."""
    if str(text).strip().lower() in ("0", "off", "none"):
        return 0, None
    parts = str(text).split(",")
    if len(parts) != 2:
        raise ValueError(f"expected N,M (operations per image, magnitude 0..10), got {text!r}")
    return int(parts[0]), int(parts[1])


def build_parser():
    """Returns the argument parser; absent flags are left out of the namespace."""
    parser = cli.ArgumentParser(
        prog="python -m trainer.task",
        description="Train an Inception-family classifier on the TFRecords python -m preprocessing.task "
        "wrote from your photos (class folders, a manifest or tiny-imagenet-200).",
        argument_default=argparse.SUPPRESS,
    )
    add = parser.add_argument
    add("--data-dir", help="Folder (or gs:// prefix) with metadata.json and the TFRecord shards.")
    add("--job-dir", help="Output folder (or gs:// prefix); default: $AIP_MODEL_DIR.")
    add(
        "--arch",
        help=f"Architecture: one of the registered models (inception_v1, minception, ...; {DEFAULT_ARCH}).",
    )
    add("--config", dest="config_file", help="YAML or JSON file of settings (flags override it).")
    add("--epochs", type=int, help="Number of epochs (default: the architecture's).")
    add("--batch-size", type=int, help="GLOBAL batch size, summed over replicas and workers.")
    add("--learning-rate", type=float, help="Initial learning rate.")
    add("--optimizer", metavar=_one_of(config_lib.OPTIMIZERS), help="Optimizer.")
    add("--weights", help="Initial weights: imagenet, none, or a weights file (fine-tuning families).")
    add(
        "--mixed-precision",
        nargs="?",
        const="mixed_float16",
        metavar=_one_of(config_lib.PRECISIONS),
        help="Keras dtype policy; the bare flag means mixed_float16 (GPUs); bfloat16 for TPUs/CPUs.",
    )
    add("--jit-compile", action=cli.BooleanFlag, help="Compile the train step with XLA.")
    add("--strategy", metavar=_one_of(config_lib.STRATEGIES), help="Distribution strategy (default: auto).")
    add("--num-cpu-devices", type=int, help="Split the CPU into N logical devices (mirrored over CPUs).")
    add("--steps-per-epoch", type=_optional_int, help="Training steps per epoch (default: one pass).")
    add("--validation-steps", type=_optional_int, help="Validation batches per epoch (default: all).")
    add("--seed", type=int, help="Seed of every random generator.")
    add("--deterministic", action=cli.BooleanFlag, help="Enable TensorFlow op determinism.")
    add(
        "--augment-on",
        metavar=_one_of(config_lib.AUGMENT_ON),
        help="Augment in the input pipeline or on device.",
    )
    add(
        "--policy",
        metavar=_one_of(config_lib.POLICIES),
        help="Augmentation policy (default: the architecture's).",
    )
    add(
        "--crop-size",
        type=int,
        help="Crop side of the crop policy; default 7/8 of the dataset's image side (56 of 64 px).",
    )
    add("--cache", action=cli.BooleanFlag, help="Cache decoded images in memory.")
    add("--dropout", type=float, help="Dropout rate before the main head (the book tries 0.2/0.5/0.8).")
    add("--aux-dropout", type=float, help="Dropout rate before the auxiliary heads (inception_v1).")
    add("--aux-loss-weight", type=float, help="Weight of each auxiliary head's loss.")
    add("--early-stopping-patience", type=int, help="Epochs without val_loss improvement before stopping.")
    add("--min-delta", type=float, help="Smallest val_loss decrease counted as improvement (e.g. 0.01).")
    add("--lr-plateau-patience", type=int, help="Epochs without improvement before reducing the LR.")
    add("--lr-plateau-factor", type=float, help="Factor applied to the learning rate on a plateau.")
    add("--frozen-epochs", type=int, help="Epochs with a frozen backbone before fine-tuning everything.")
    add(
        "--backbone-size",
        type=int,
        help="Side the images are resized to inside inception_resnet_v2, before its backbone: 224, the "
        "ImageNet weights' own, unless given; from 75 (a smaller side costs about (side/224)^2 of the "
        "compute).",
    )
    add("--warmup-epochs", type=int, help=argparse.SUPPRESS)  # Renamed: TrainConfig names the new flag.
    add(
        "--bn-momentum",
        type=float,
        help="Momentum of the batch-norm moving statistics (Keras convention; default 0.9, Keras' own 0.99).",
    )
    add(
        "--precise-bn",
        type=_batches_or_auto,
        metavar="N|auto",
        help="Recompute batch-norm statistics from N clean training batches before each validation "
        "and the export (0: off; auto: up to 8192 images).",
    )
    add(
        "--monitor-start-epoch",
        type=int,
        help="First epoch (0-based) early stopping and the best model watch (default: per architecture).",
    )
    add(
        "--recipe",
        metavar=_one_of(config_lib.RECIPES),
        help="Training recipe (default: modern): modern adds label smoothing, and from 60 epochs on "
        "RandAugment, mixup, AdamW and a cosine schedule (docs/models.md has the rule); book is the "
        "chapter's recipe.",
    )
    add(
        "--class-weight",
        metavar=_one_of(config_lib.CLASS_WEIGHTS),
        help="balanced: weight each example's loss by n / (classes x its class's count) in train "
        "(default: none).",
    )
    add(
        "--calibration",
        metavar=_one_of(config_lib.CALIBRATIONS),
        help="temperature: fit a softmax temperature on valid and export calibrated probabilities "
        "(default); none: the raw softmax.",
    )
    add("--flip", action=cli.BooleanFlag, help="Flip half of the training images left-right.")
    add(
        "--randaugment", type=_randaugment, metavar="N,M", help="RandAugment: N ops per image at magnitude M."
    )
    add("--random-erasing", type=float, metavar="P", help="Erase a random rectangle with probability P.")
    add("--mixup", type=float, metavar="ALPHA", help="Mixup with Beta(ALPHA, ALPHA) (0: off).")
    add("--cutmix", type=float, metavar="ALPHA", help="CutMix with Beta(ALPHA, ALPHA) (0: off).")
    add("--label-smoothing", type=float, metavar="EPS", help="Label smoothing of every head's targets.")
    add("--weight-decay", type=float, help="Decoupled weight decay (not on biases and batch norm).")
    add("--lr-schedule", metavar=_one_of(config_lib.LR_SCHEDULES), help="Learning-rate schedule.")
    add("--lr-warmup-epochs", type=int, help="Linear learning-rate warm-up epochs (cosine schedule).")
    add("--clip-norm", type=float, help="Clip the global gradient norm to this (0: off).")
    add("--ema", type=float, metavar="DECAY", help="Evaluate, save and export an EMA of the weights.")
    add("--sync-bn", action=cli.BooleanFlag, help="Batch-norm statistics over all replicas and workers.")
    add("--explain", action=cli.BooleanFlag, help="Enable the Grad-CAM callback (default: on).")
    add("--export", action=cli.BooleanFlag, help="Write the SavedModel export at the end (default: on).")
    add("--explain-every", type=int, metavar="N", help="Grad-CAM probes after every N epochs (default 5).")
    add(
        "--shortcut-probes",
        type=int,
        metavar="K",
        help="Shortcut alarm after K probes in a row of high accuracy with the pointing game clearly "
        "below the centre baseline (default 2); the kept weights are checked once more at the end.",
    )
    add("--debug-dump-weights", help="For tests: every worker writes its final weights to this folder.")
    add("--backup-every-steps", type=int, help="Also back up every N steps within an epoch (0: off).")
    add(
        "--stop-check-every-steps",
        type=int,
        help="Cluster workers agree on a SIGTERM every N steps (one scalar all-reduce; default 10).",
    )
    quiet.add_verbose_flag(parser)
    return parser


def read_config_file(path):
    """Reads a YAML or JSON settings file into a dict with underscore keys.

    Raises:
        ValueError: The file is not valid YAML/JSON or holds no mapping.
        OSError: The file cannot be read.
    """
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        values = json.loads(text)
    else:
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            # The parser's own message spans several lines; the CLI prints one.
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or " ".join(str(error).split())
            raise ValueError(f"{path}: invalid YAML{where}: {problem}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def architecture_defaults(arch):
    """Returns the config values the architecture's defaults table supplies."""
    from trainer import models

    defaults = models.get_defaults(arch)
    fields = set(config_lib.field_names())
    values = {}
    for name, value in vars(defaults).items():
        name = _DEFAULT_FIELDS.get(name, name)
        if name in fields:
            values[name] = value
    if not defaults.aux_outputs:
        values.pop("aux_dropout", None)
    # No crop_size: the defaults table's input_size is for 64-px images; the run derives the
    # crop from the dataset's image side (TrainConfig.for_images).
    return values


def resolve(argv=None, environ=None):
    """Parses ``argv`` and returns the frozen :class:`trainer.config.TrainConfig`.

    Raises:
        ValueError: Unknown architecture, unknown keys, invalid values.
    """
    environ = os.environ if environ is None else environ
    flags, config_file = split_flags(build_parser().parse_args(argv))
    from_file = read_config_file(config_file) if config_file else {}
    arch = flags.get("arch", from_file.get("arch")) or DEFAULT_ARCH
    _split_randaugment(from_file)
    values = architecture_defaults(arch)
    values.update(from_file)
    values.update(environment.values(environ))
    values.update(flags)
    # The recipe's settings sit between the architecture's and the ones given explicitly.
    recipe_values = recipe_settings(values)
    values = {
        **architecture_defaults(arch),
        **recipe_values,
        **from_file,
        **environment.values(environ),
        **flags,
    }
    if "job_dir" not in values and environ.get(environment.JOB_DIR_VARIABLE):
        values["job_dir"] = environ[environment.JOB_DIR_VARIABLE]
    if isinstance(values.get("weights"), str) and values["weights"].lower() == "none":
        values["weights"] = None
    if str(values.get("precise_bn")).lower() == "auto":
        values["precise_bn"] = None
    if values.get("mixed_precision") is None:
        values["mixed_precision"] = "float32"
    values.setdefault("data_dir", "")
    values.setdefault("job_dir", "")
    values["arch"] = arch
    if values.get("frozen_epochs") and not _fine_tunable(arch):
        raise ValueError(f"--frozen-epochs needs an architecture with a pretrained backbone, not {arch!r}")
    if values.get("backbone_size") is not None and not _fine_tunable(arch):
        raise ValueError(f"--backbone-size needs an architecture with a pretrained backbone, not {arch!r}")
    return config_lib.from_dict(values)


def split_flags(namespace):
    """Returns ``(settings, config_file)`` of parsed flags: the settings given and the ``--config`` file."""
    flags = vars(namespace)
    # -v acted before TensorFlow loaded (quiet.quiet_tensorflow); it is no setting of the run.
    flags.pop("verbose", None)
    config_file = flags.pop("config_file", None)
    _split_randaugment(flags)
    return flags, config_file


def _split_randaugment(values):
    """Turns a ``randaugment`` value (flag tuple, or ``"N,M"`` of a config file) into its two fields."""
    if "randaugment" not in values:
        return
    value = values.pop("randaugment")
    ops, magnitude = value if isinstance(value, tuple) else _randaugment(value)
    values["randaugment_ops"] = ops
    if magnitude is not None:
        values["randaugment_magnitude"] = magnitude


def recipe_settings(values):
    """Returns what ``values['recipe']`` sets for the run's budget (:func:`trainer.recipe.settings`)."""
    from trainer import recipe

    name = values.get("recipe", config_lib.TrainConfig.recipe)
    if name == "book":
        return {}
    epochs = values.get("epochs", config_lib.TrainConfig.epochs)
    steps = values.get("steps_per_epoch")
    if not all(_is_int(value) for value in (epochs, steps, values.get("batch_size")) if value is not None):
        return {}  # TrainConfig names the value that is no number, in its own words.
    train_images = None
    if steps is not None:
        from contracts import dataset

        train_images = dataset.load_metadata(values.get("data_dir", "")).split_counts["train"]
    run_passes = recipe.passes(epochs, steps, values.get("batch_size"), train_images)
    return recipe.settings(name, epochs=epochs, run_passes=run_passes)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _fine_tunable(arch):
    from trainer import models

    return models.get_defaults(arch).fine_tunable


def main(argv=None):
    """Entry point; returns the process exit code.

    Exit codes: 0 done; 2 bad input, or an output that cannot be written (a full
    disk); 3 diverged (a NaN or infinite loss, the last good backup kept); 143
    preempted (state backed up).
    """
    clock = stages.StageClock()  # Before the flags: resolving them imports TensorFlow.
    try:
        config = resolve(argv)
        from trainer import distribute  # TensorFlow is loaded by now (resolve's defaults table).

        distribute.tf_config()  # A wrong-shaped TF_CONFIG is this line, not a traceback mid-run.
        environment.check_outputs(config, os.environ)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from trainer import train

    try:
        train.run(config, clock=clock)
    except train.Preempted as stop:
        print(f"preempted: {stop}; state backed up, run the same command to resume", file=sys.stderr)
        return train.PREEMPTED_EXIT_CODE
    except train.Diverged as error:
        print(f"error: {error}", file=sys.stderr)
        return train.DIVERGED_EXIT_CODE
    # DataError, JobDirError and bad values are ValueErrors; a full disk or a folder gone mid-run
    # an OSError: each is one line (a final file is never left half-written: storage.write_atomically).
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
