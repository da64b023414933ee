"""The trainer's resolved configuration: one frozen dataclass, validated once.

Values come, lowest precedence first, from the architecture's defaults
(``models.get_defaults``), an optional YAML/JSON file and the command line;
:mod:`trainer.task` merges them and builds a :class:`TrainConfig`. Everything
below the entry point receives this object (or plain values taken from it) and
never reads flags or the environment.
"""

import dataclasses
import math
import typing

from contracts import jobdir, policy
from trainer import calibration

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "bfloat16")
AUGMENT_ON = ("host", "device")
POLICIES = policy.POLICIES
RECIPES = ("book", "modern")
CLASS_WEIGHTS = ("none", "balanced")
CALIBRATIONS = calibration.MODES
LR_SCHEDULES = ("plateau", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "nadam", "adamax", "adagrad", "adadelta", "lion")

# contracts.jobdir.FOLDERS name -> the TrainConfig field that overrides it.
_FOLDER_FIELDS = {
    "logs": "log_dir",
    "checkpoints": "checkpoint_dir",
    "backup": "backup_dir",
    "export": "export_dir",
}
_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
# Settings that were renamed: an old config file or command line gets one clear error.
RENAMED = {"warmup_epochs": "frozen_epochs"}
# A YAML/JSON integer is a valid number; 0/1 are valid switches.
_ALSO_ACCEPTED = {float: int, bool: int}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs.

    Attributes:
        data_dir: Folder (local or ``gs://``) holding ``metadata.json`` and the shards.
        job_dir: Output folder (local or ``gs://``).
        arch: Registered architecture name.
        epochs: Number of epochs to train.
        batch_size: Global batch size (summed over all replicas and workers).
        learning_rate: Initial learning rate.
        optimizer: Optimizer name, one of :data:`OPTIMIZERS`.
        weights: Initial weights passed to the model builder (``None``, ``imagenet`` or a path).
        mixed_precision: Keras dtype policy: ``float32``, ``mixed_float16`` or ``bfloat16``.
        jit_compile: Compile the per-replica train step with XLA.
        strategy: ``auto``, ``one_device``, ``mirrored`` or ``multi_worker``.
        num_cpu_devices: Split the CPU into this many logical devices (0 or 1: no split).
        steps_per_epoch: Training steps per epoch; ``None``: one pass over ``train``.
        validation_steps: Validation steps per epoch; ``None``: the whole ``valid`` split.
        seed: Seed of every random generator.
        deterministic: Turn on TensorFlow op determinism.
        augment_on: Run augmentation in the tf.data pipeline (``host``) or in the train step.
        policy: Augmentation policy: ``book``, ``crop`` or ``none``.
        crop_size: Crop side of the ``crop`` policy; ``None``: 7/8 of the dataset's
            image side (:func:`contracts.policy.default_crop_size`), resolved
            by :meth:`TrainConfig.for_images` before ``config.json`` is written.
        cache: Cache decoded images in memory.
        dropout: Dropout rate of the main head.
        aux_dropout: Dropout rate of the auxiliary heads.
        aux_loss_weight: Weight of each auxiliary head's loss.
        early_stopping_patience: Epochs without ``val_loss`` improvement before stopping.
        min_delta: Smallest ``val_loss`` decrease that counts as an improvement (early stopping).
        lr_plateau_patience: Epochs without improvement before the learning rate is reduced.
        lr_plateau_factor: Factor applied to the learning rate on a plateau.
        frozen_epochs: Epochs with a frozen backbone (two-phase fine-tuning); 0: none.
        backbone_size: Side the input is resized to before a pretrained backbone
            (inception_resnet_v2: 224 by default; ``None`` for families without one).
        log_dir: TensorBoard folder (``AIP_TENSORBOARD_LOG_DIR`` or ``job_dir/logs``).
        checkpoint_dir: Plateau checkpoints (``AIP_CHECKPOINT_DIR`` or ``job_dir/checkpoints``).
        backup_dir: Preemption backup (``checkpoint_dir``'s sibling ``backup``).
        export_dir: SavedModel folder (``AIP_MODEL_DIR`` or ``job_dir/export``).
        explain: Enable the Grad-CAM callback when the ``explain`` package provides one.
        export: Write the SavedModel export at the end (off: a tuning trial or
            a test run that only needs ``metrics.json`` and ``model.keras``).
        explain_every: The Grad-CAM callback explains and scores its probe set
            after every this many epochs.
        shortcut_probes: Consecutive probes (``K``) of high validation accuracy
            with the pointing game clearly below its centre baseline that raise the
            shortcut alarm during training; the final check of the kept weights
            needs no streak (:mod:`explain.shortcut`, docs/explain.md).
        hypertune_metric: Tag under which the validation accuracy is reported to
            Vertex AI hyperparameter tuning; ``None`` outside a tuning trial.
        debug_dump_weights: Test-only: folder where every worker dumps its final weights.
        backup_every_steps: Also back up the full state every this many steps
            within an epoch (bounds the work a kill loses); 0: at epoch ends only.
        stop_check_every_steps: Workers of a cluster agree on a stop request
            (SIGTERM) every this many steps: one scalar all-reduce each time.
        bn_momentum: Momentum of the batch-norm moving statistics (Keras'
            convention: the weight of the old value).
        precise_bn: Batches of clean training images from which the batch-norm
            statistics are recomputed before every validation, the final
            evaluation and the export; 0: off; ``None``: auto
            (:func:`trainer.precise_bn.auto_batches`).
        monitor_start_epoch: First epoch (0-based) early stopping and the
            best-model checkpoint consider; capped at the last epoch.
        recipe: ``modern`` (the default), whose settings :func:`trainer.recipe.settings`
            chooses from the budget, or ``book`` (the chapter's recipe); the
            resolved values are the fields below.
        flip: Flip half of the training images left-right (on top of the policy).
        randaugment_ops: RandAugment operations per image; 0: off.
        randaugment_magnitude: RandAugment magnitude on timm's 0..10 scale.
        random_erasing: Probability of erasing one random rectangle per image.
        mixup: Mixup's Beta(alpha, alpha) parameter; 0: off.
        cutmix: CutMix's Beta(alpha, alpha) parameter; 0: off. With mixup on
            too, each batch uses one of the two (even odds).
        label_smoothing: Weight of the uniform distribution in every head's targets.
        weight_decay: Decoupled weight decay (not on biases and normalization parameters).
        lr_schedule: ``plateau`` (reduce on a plateau) or ``cosine`` (per-step
            cosine decay to 0 over the run).
        lr_warmup_epochs: Epochs of linear learning-rate warm-up from 0 (``cosine``).
        clip_norm: Clip the global gradient norm (over all replicas) to this; 0: off.
        ema: Decay of the exponential moving average of the weights that is
            evaluated, saved and exported; 0: off.
        sync_bn: Batch-norm batch statistics over all replicas and workers.
        class_weight: ``none``, or ``balanced``: every example's loss weighted by
            its class's ``n_samples / (n_classes * count)`` over the training split
            (:mod:`trainer.class_weights`).
        calibration: ``temperature``: fit one softmax temperature on valid, report the
            calibration error before and after, and serve calibrated probabilities from the
            export (:mod:`trainer.calibration`); ``none``: the raw softmax.
    """

    data_dir: str
    job_dir: str
    arch: str
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 0.01
    optimizer: str = "sgd"
    weights: str | None = None
    mixed_precision: str = "float32"
    jit_compile: bool = False
    strategy: str = "auto"
    num_cpu_devices: int = 0
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    seed: int = 42
    deterministic: bool = False
    augment_on: str = "host"
    policy: str = "book"
    crop_size: int | None = None
    cache: bool = False
    dropout: float | None = None
    aux_dropout: float | None = None
    aux_loss_weight: float = 0.3
    early_stopping_patience: int = 10
    min_delta: float = 0.0
    lr_plateau_patience: int = 5
    lr_plateau_factor: float = 0.1
    frozen_epochs: int = 0
    backbone_size: int | None = None
    log_dir: str = ""
    checkpoint_dir: str = ""
    backup_dir: str = ""
    export_dir: str = ""
    explain: bool = True
    export: bool = True
    explain_every: int = 5
    shortcut_probes: int = 2
    hypertune_metric: str | None = None
    debug_dump_weights: str | None = None
    backup_every_steps: int = 0
    stop_check_every_steps: int = 10
    bn_momentum: float = 0.9
    precise_bn: int | None = None
    monitor_start_epoch: int = 0
    recipe: str = "modern"
    flip: bool = False
    randaugment_ops: int = 0
    randaugment_magnitude: int = 9
    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    lr_schedule: str = "plateau"
    lr_warmup_epochs: int = 0
    clip_norm: float = 0.0
    ema: float = 0.0
    sync_bn: bool = False
    class_weight: str = "none"
    calibration: str = "temperature"

    def __post_init__(self):
        _check_types(self)
        _check_finite(self)
        for name in ("data_dir", "job_dir", "arch"):
            if not getattr(self, name):
                raise ValueError(f"{name.replace('_', '-')} is required")
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("mixed_precision", self.mixed_precision, PRECISIONS)
        _check_choice("augment_on", self.augment_on, AUGMENT_ON)
        _check_choice("policy", self.policy, POLICIES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("recipe", self.recipe, RECIPES)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        _check_choice("calibration", self.calibration, CALIBRATIONS)
        for name in ("epochs", "batch_size", "explain_every", "shortcut_probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps_per_epoch", "validation_steps", "crop_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or unset, got {value}")
        nonnegative = ("num_cpu_devices", "early_stopping_patience", "lr_plateau_patience", "frozen_epochs")
        for name in (*nonnegative, "monitor_start_epoch", "randaugment_ops", "lr_warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        _check_recipe_values(self)
        if self.backup_every_steps < 0:
            raise ValueError(f"backup_every_steps must be >= 0, got {self.backup_every_steps}")
        if self.stop_check_every_steps < 1:
            raise ValueError(f"stop_check_every_steps must be >= 1, got {self.stop_check_every_steps}")
        if self.precise_bn is not None and self.precise_bn < 0:
            raise ValueError(f"precise_bn must be >= 0 (0: off) or auto, got {self.precise_bn}")
        for name in ("dropout", "aux_dropout", "bn_momentum"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 < self.lr_plateau_factor < 1.0:
            raise ValueError(f"lr_plateau_factor must be in (0, 1), got {self.lr_plateau_factor}")
        if self.aux_loss_weight < 0 or self.min_delta < 0:
            raise ValueError("aux_loss_weight and min_delta must be >= 0")
        # Derived output folders default to the job dir's layout.
        for name, value in jobdir.default_folders(self.job_dir).items():
            field = _FOLDER_FIELDS[name]
            if not getattr(self, field):
                object.__setattr__(self, field, value)

    def to_dict(self):
        """Returns the configuration as a JSON-serializable dict."""
        return dataclasses.asdict(self)

    def to_json(self):
        """Returns the configuration as indented JSON text."""
        return jobdir.to_json(self.to_dict(), indent=2, sort_keys=True)

    def for_images(self, image_size):
        """Returns this configuration with what the dataset's image side decides resolved: the crop side.

        Raises:
            ValueError: A ``crop_size`` larger than the images.
        """
        crop_size = policy.resolve_crop_size(image_size, self.crop_size)
        policy.check_policy(self.policy, image_size, crop_size)
        return dataclasses.replace(self, crop_size=crop_size)

    def augment_options(self):
        """The keyword arguments of :class:`trainer.augment.Augmenter` that are on, beyond the policy."""
        randaugment = (self.randaugment_ops, self.randaugment_magnitude) if self.randaugment_ops else None
        options = {"flip": self.flip, "randaugment": randaugment, "random_erasing": self.random_erasing}
        return {name: value for name, value in options.items() if value}

    def hparams(self):
        """Returns the hyperparameters shown in TensorBoard's HParams dashboard."""
        keys = (
            "arch",
            "epochs",
            "batch_size",
            "learning_rate",
            "optimizer",
            "mixed_precision",
            "policy",
            "augment_on",
            "aux_loss_weight",
            "lr_plateau_factor",
            "lr_plateau_patience",
            "early_stopping_patience",
            "min_delta",
            "frozen_epochs",
            "bn_momentum",
            "monitor_start_epoch",
            "recipe",
            "flip",
            "randaugment_ops",
            "randaugment_magnitude",
            "random_erasing",
            "mixup",
            "cutmix",
            "label_smoothing",
            "weight_decay",
            "lr_schedule",
            "lr_warmup_epochs",
            "clip_norm",
            "ema",
            "sync_bn",
            "class_weight",
        )
        values = {key: getattr(self, key) for key in keys}
        values["precise_bn"] = -1 if self.precise_bn is None else self.precise_bn
        values["dropout"] = -1.0 if self.dropout is None else self.dropout
        values["aux_dropout"] = -1.0 if self.aux_dropout is None else self.aux_dropout
        return values


def field_names():
    """Returns the names of every :class:`TrainConfig` field."""
    return [field.name for field in dataclasses.fields(TrainConfig)]


def from_dict(values):
    """Builds a :class:`TrainConfig` from a dict, rejecting unknown keys.

    Raises:
        ValueError: On an unknown key or an invalid value.
    """
    for old, new in RENAMED.items():
        if old in values:
            flag = new.replace("_", "-")
            raise ValueError(
                f"{old} was renamed {new} (--{flag}); --lr-warmup-epochs is the learning-rate warm-up"
            )
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
    return TrainConfig(**values)


def _check_types(config):
    # Values of a YAML/JSON file arrive untyped: a string where a number belongs
    # must be a clear error, not a TypeError in the range checks below.
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        declared = typing.get_args(field.type) or (field.type,)
        allowed = declared + tuple(_ALSO_ACCEPTED[kind] for kind in declared if kind in _ALSO_ACCEPTED)
        if not isinstance(value, allowed):
            expected = " or ".join(_TYPE_NAMES[kind] for kind in declared)
            raise ValueError(f"{field.name} must be {expected}, got {value!r}")


def _check_finite(config):
    # NaN passes every range check below (each comparison is false) and inf
    # passes the one-sided ones: --learning-rate inf would train a NaN model.
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{field.name} must be a finite number, got {value}")


def _check_recipe_values(config):
    """The ranges of the recipe's settings (each is also a flag of its own)."""
    if not 0 <= config.randaugment_magnitude <= 30:
        raise ValueError(f"randaugment_magnitude must be in [0, 30], got {config.randaugment_magnitude}")
    for name in ("mixup", "cutmix", "weight_decay", "clip_norm"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0: off), got {getattr(config, name)}")
    for name in ("random_erasing", "label_smoothing"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(config, name)}")
    if not 0.0 <= config.ema < 1.0:
        raise ValueError(f"ema must be in [0, 1) (0: off), got {config.ema}")
    if config.lr_warmup_epochs and config.lr_schedule != "cosine":
        raise ValueError("lr_warmup_epochs needs lr_schedule cosine")
    if config.lr_warmup_epochs >= config.epochs and config.lr_warmup_epochs:
        raise ValueError(f"lr_warmup_epochs ({config.lr_warmup_epochs}) must be < epochs ({config.epochs})")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
