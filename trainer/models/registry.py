"""Registry of model families: one table of defaults, one entry point to build.

Each family module decorates its builder with :func:`register_model`; the
trainer, the explainer and the tests only ever call :func:`build_model`,
:func:`get_defaults` and :func:`list_models`, so a new architecture needs no
change outside its own file (timm's ``_registry.py`` idea).

A builder is a plain function ``builder(num_classes, *, input_size, dropout,
...)``. The keyword arguments it declares are the ones it accepts; their
default values come from the :class:`ArchDefaults` fields of the same name.
"""

import dataclasses
import inspect
import numbers
from collections.abc import Callable

import keras

# Smallest input side every family can take: below it pooling stages collapse.
MIN_INPUT_SIZE = 32

# Build-time options a caller may pass; each builder accepts a subset.
_OPTIONS = ("input_size", "dropout", "aux_dropout", "weights", "backbone_size")
# Options every family takes, applied to the built model rather than by its builder.
_MODEL_OPTIONS = ("bn_momentum", "sync_bn")

_BUILDERS: dict[str, Callable[..., keras.Model]] = {}
_DEFAULTS: dict[str, "ArchDefaults"] = {}

# Marks "not given" where None is a meaningful value (weights=None: random init).
_UNSET = object()


class WeightsUnavailableError(ValueError):
    """Pretrained weights a builder needs cannot be fetched (e.g. no internet access).

    A ``ValueError``, so the trainer's CLI reports its one-line message as an
    ``error:`` line with exit code 2 rather than a traceback.
    """


@dataclasses.dataclass(frozen=True)
class ArchDefaults:
    """Per-architecture defaults: the single table the trainer reads.

    Attributes:
        input_size: Side ``S`` of the ``[B, S, S, 3]`` raw-pixel input the
            model takes (after the augmentation policy's evaluation transform).
        augmentation: Augmentation policy name: ``book``, ``crop`` or ``none``.
        optimizer: Optimizer name.
        learning_rate: Initial learning rate.
        dropout: Dropout rate before the main softmax head.
        aux_dropout: Dropout rate before the auxiliary heads (0 without them).
        aux_loss_weight: Weight of each auxiliary head's loss.
        aux_outputs: Names of the auxiliary output layers, in order.
        early_stopping_patience: Epochs without val-loss improvement to stop.
        lr_plateau_factor: Learning-rate multiplier on a plateau.
        lr_plateau_patience: Epochs without improvement before reducing.
        batch_size: Global batch size.
        epochs: Maximum number of epochs.
        weights: Backbone weights: ``"imagenet"``, ``None`` (random) or a path.
        frozen_epochs: Epochs training the head only before unfreezing the
            backbone (fine-tuning families only).
        bn_momentum: Momentum of every batch-norm layer's moving statistics
            (Keras' convention: the weight of the old value). 0.9, PyTorch's
            and timm's 0.1 in their convention, keeps up with a few hundred
            steps; Keras' 0.99 needs thousands (see docs/trainer.md).
        monitor_start_epoch: First epoch (0-based) whose validation loss early
            stopping and the best-model checkpoint consider.
        feature_layer: Name of the last spatial layer, Grad-CAM's target.
        fine_tunable: Whether the family has a backbone that can be frozen
            for a warm-up (``set_backbone_trainable``).
        backbone_size: Side the input is resized to inside the model before a
            pretrained backbone (``None``: the family has no such resize).
    """

    input_size: int
    augmentation: str
    learning_rate: float
    dropout: float
    early_stopping_patience: int
    feature_layer: str
    optimizer: str = "adam"
    aux_dropout: float = 0.0
    aux_loss_weight: float = 0.0
    aux_outputs: tuple[str, ...] = ()
    lr_plateau_factor: float = 0.1
    lr_plateau_patience: int = 5
    batch_size: int = 128
    epochs: int = 50
    weights: str | None = None
    frozen_epochs: int = 0
    fine_tunable: bool = False
    bn_momentum: float = 0.9
    monitor_start_epoch: int = 0
    backbone_size: int | None = None


def register_model(name: str, defaults: ArchDefaults) -> Callable:
    """Registers a model builder under ``name`` with its defaults.

    Args:
        name: Registry name (the ``--model`` value).
        defaults: The architecture's row of the defaults table.

    Returns:
        A decorator that records the builder and returns it unchanged.

    Raises:
        ValueError: If ``name`` is already registered or the builder accepts an
            option that is not a known build option.
    """
    if not isinstance(defaults, ArchDefaults):
        raise ValueError(f"defaults for {name!r} must be an ArchDefaults, got {defaults!r}")

    def decorator(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        unknown = sorted(set(_builder_options(builder)) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"builder for {name!r} takes unknown options {unknown}; known: {list(_OPTIONS)}")
        _BUILDERS[name] = builder
        _DEFAULTS[name] = defaults
        return builder

    return decorator


def list_models() -> list[str]:
    """Returns the registered model names, sorted."""
    return sorted(_BUILDERS)


def get_defaults(name: str) -> ArchDefaults:
    """Returns the defaults of model ``name``.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    _check_name(name)
    return _DEFAULTS[name]


def build_model(name: str, num_classes: int, *, seed: int | None = None, **options) -> keras.Model:
    """Builds a registered model taking ``[B, S, S, 3]`` float32 pixels in [0, 255].

    Args:
        name: Registry name, one of :func:`list_models`.
        num_classes: Number of classes of the softmax heads.
        seed: If given, seeds Python, NumPy and the backend (global state) so
            the initial weights are reproducible.
        **options: ``input_size``, ``dropout``, ``aux_dropout`` (families with
            auxiliary heads), ``weights`` (fine-tuning families: ``"imagenet"``,
            ``None`` for random init, or a local weights file path),
            ``bn_momentum`` (every family: set on every batch-norm layer, a
            pretrained backbone's included). A value of ``None`` (except for
            ``weights``) or an omitted option falls back to :func:`get_defaults`.

    Returns:
        A functional ``keras.Model`` whose main output layer is ``predictions``.
        Families with auxiliary heads return a dict of outputs keyed by layer
        name; the others return the ``predictions`` tensor.

    Raises:
        WeightsUnavailableError: If pretrained weights cannot be downloaded.
        ValueError: On an unknown name, option, or an invalid option value.
    """
    _check_name(name)
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    builder = _BUILDERS[name]
    accepted = _builder_options(builder)
    unknown = sorted(set(options) - set(_OPTIONS) - set(_MODEL_OPTIONS))
    if unknown:
        known = [*_OPTIONS, *_MODEL_OPTIONS]
        raise ValueError(f"unknown build options {unknown} for {name!r}; known: {known}")
    sync_bn = bool(options.pop("sync_bn", False))
    bn_momentum = options.pop("bn_momentum", None)
    bn_momentum = _DEFAULTS[name].bn_momentum if bn_momentum is None else bn_momentum
    if not (isinstance(bn_momentum, int | float) and 0.0 <= bn_momentum < 1.0):
        raise ValueError(f"bn_momentum for {name!r} must be in [0, 1), got {bn_momentum!r}")
    kwargs = {}
    for option in accepted:
        value = options.pop(option, _UNSET)
        if value is _UNSET or (value is None and option != "weights"):
            value = getattr(_DEFAULTS[name], option)
        kwargs[option] = value
    for option, value in options.items():
        if value is not None:
            raise ValueError(f"option {option}={value!r} does not apply to {name!r}; it takes {accepted}")
    _validate(name, kwargs)
    if "input_size" in kwargs:
        kwargs["input_size"] = int(kwargs["input_size"])
    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = builder(int(num_classes), **kwargs)
    set_bn_momentum(model, float(bn_momentum), synchronized=sync_bn)
    return model


def set_bn_momentum(model: keras.Model, momentum: float, synchronized: bool = False) -> None:
    """Sets the momentum (and synchronization) of every ``BatchNormalization`` layer of ``model``.

    Keras reads both when a step is traced, so call this before training.
    ``synchronized`` computes the batch statistics over every replica and
    worker of the strategy (Keras' ``BatchNormalization(synchronized=True)``).
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            layer.synchronized = synchronized


def _builder_options(builder: Callable) -> tuple[str, ...]:
    params = inspect.signature(builder).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _is_int(value) -> bool:
    # NumPy integers count (class counts often come from arrays); booleans do not.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def _validate(name: str, kwargs: dict) -> None:
    size = kwargs.get("input_size")
    if size is not None and (not _is_int(size) or size < MIN_INPUT_SIZE):
        raise ValueError(f"input_size for {name!r} must be an integer >= {MIN_INPUT_SIZE}, got {size!r}")
    for option in ("dropout", "aux_dropout"):
        rate = kwargs.get(option)
        if rate is not None and not (isinstance(rate, int | float) and 0.0 <= rate < 1.0):
            raise ValueError(f"{option} for {name!r} must be in [0, 1), got {rate!r}")
