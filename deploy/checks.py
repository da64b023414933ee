"""Value checks and catalogs shared by the job specifications.

Every failed check raises :class:`ConfigError` with a one-line message that
the CLI prints as is.
"""

import difflib
import importlib
import re

# The trainer's registry is the source of truth; this copy lets specs render
# on a machine without TensorFlow (tests compare it with list_models()).
FALLBACK_ARCHITECTURES = ("inception_resnet_v2", "inception_v1", "minception")

# GKE node label value (cloud.google.com/gke-accelerator) -> Vertex AI
# AcceleratorType enum name. One table so both targets accept the same flag.
GPU_TYPES = {
    "nvidia-tesla-t4": "NVIDIA_TESLA_T4",
    "nvidia-tesla-p4": "NVIDIA_TESLA_P4",
    "nvidia-tesla-p100": "NVIDIA_TESLA_P100",
    "nvidia-tesla-v100": "NVIDIA_TESLA_V100",
    "nvidia-l4": "NVIDIA_L4",
    "nvidia-tesla-a100": "NVIDIA_TESLA_A100",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB",
    "nvidia-h100-80gb": "NVIDIA_H100_80GB",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_80GB",
    "nvidia-h200-141gb": "NVIDIA_H200_141GB",
    "nvidia-b200": "NVIDIA_B200",
}
DEFAULT_GPU_TYPE = "nvidia-tesla-t4"
# Vertex needs a machine type; n1 hosts take T4/P4/P100/V100 GPUs.
DEFAULT_VERTEX_MACHINE_TYPE = "n1-standard-8"
TF_PORT = 2222
# Flags the launcher sets itself from its own options; passing them after
# `--` would silently contradict the job layout.
RESERVED_TRAINER_FLAGS = ("--arch", "--data-dir", "--job-dir", "--strategy")
# The flags hptune's study sets in every trial (its parameter ids with "--"):
# a value given after `--` would be replaced by each trial's own.
TUNED_TRAINER_FLAGS = ("--learning-rate", "--dropout", "--batch-size")

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
SA_EMAIL = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]@[-a-z0-9.]+\.gserviceaccount\.com$")
PROJECT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
TENSORBOARD = re.compile(r"^projects/[^/]+/locations/[^/]+/tensorboards/[0-9]+$")
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")
# Indexed Job pods are named "<job>-<index>"; keep room for the suffix.
MAX_NAME_LENGTH = 50


class ConfigError(ValueError):
    """An invalid job setting; the message is one line meant for the user."""


def known_architectures():
    """Returns the sorted architecture names the trainer can build.

    Asks ``trainer.models.list_models()`` when the trainer package (and so
    TensorFlow) is importable, else returns :data:`FALLBACK_ARCHITECTURES`.
    """
    try:
        models = importlib.import_module("trainer.models")
    except ImportError:
        return FALLBACK_ARCHITECTURES
    return tuple(sorted(models.list_models()))


def check_architecture(name):
    """Raises :class:`ConfigError` unless the trainer knows architecture ``name``.

    The fallback list answers for the known names so rendering a spec does not
    load TensorFlow; anything else is looked up in the trainer's registry.
    """
    if name in FALLBACK_ARCHITECTURES:
        return
    names = known_architectures()
    if name not in names:
        raise ConfigError(f"unknown --arch {name!r}; choose one of: {', '.join(names)}")


def normalize_gpu_type(name):
    """Maps ``NVIDIA_TESLA_T4`` or ``nvidia-tesla-t4`` to ``nvidia-tesla-t4``.

    Raises:
        ConfigError: the name is not in :data:`GPU_TYPES`.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in GPU_TYPES:
        raise ConfigError(f"unknown GPU type {name!r}; choose one of: {', '.join(GPU_TYPES)}")
    return key


def parse_duration(text):
    """Parses ``"3600"``, ``"90m"``, ``"1h30m"`` or ``"2d"`` into whole seconds.

    Raises:
        ConfigError: the text is not a positive duration.
    """
    match = DURATION.match(text.strip()) if text else None
    if not match or not any(match.groups()):
        raise ConfigError(f"bad duration {text!r}; use e.g. 3600, 90m, 1h30m or 2d")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ConfigError(f"duration {text!r} must be positive")
    return total


def require_gcs(flag, url):
    """Raises :class:`ConfigError` unless ``url`` is a ``gs://bucket/...`` URL."""
    if not re.match(r"^gs://[a-z0-9][-_.a-z0-9]{1,221}[a-z0-9](/.*)?$", url or ""):
        raise ConfigError(f"{flag} must be a gs://bucket/path URL for a cloud job, got {url!r}")


def require(condition, message):
    """Raises :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def check_pattern(pattern, value, flag):
    """Raises :class:`ConfigError` naming ``flag`` unless ``pattern`` matches ``value``."""
    require(pattern.match(value or "") is not None, f"bad {flag} {value!r}")


def check_trainer_flags(argv):
    """Parses and checks ``python -m trainer.task`` arguments as the trainer will, reading nothing.

    The trainer's own parser (``trainer.task.build_parser``) reads ``argv``
    and its configuration checks (``TrainConfig.__post_init__``) judge the
    values, merged as ``trainer.task.resolve`` merges them, except for what
    only the cluster can supply: the architecture's defaults table (it needs
    TensorFlow; ``TrainConfig``'s defaults stand in, which today agree where
    a check reads them), a ``--config`` file (it is in the image), the
    training-image count some ``--recipe modern`` budgets need (read from the
    data: what either budget accepts passes) and the output folders.

    Args:
        argv: The trainer's whole argument list (``TrainJob.trainer_argv()``).

    Raises:
        ConfigError: ``trainer flags after --: <message>`` naming the flag.
    """
    # Function-level: the trainer's modules load numpy, which the other commands do not need.
    from trainer import config as trainer_config
    from trainer import task as trainer_task

    parser = trainer_task.build_parser()
    try:
        namespace, unknown = parse_known(parser, argv)
        if unknown:
            raise ValueError(_unrecognized(unknown, parser))
        # A --config file names a path inside the image; the trainer reads it there.
        flags, _ = trainer_task.split_flags(namespace)
        errors = []
        for recipe_values in _recipe_candidates(flags):
            try:
                trainer_config.from_dict({**recipe_values, **flags})
                return
            except ValueError as error:
                errors.append(error)
        raise errors[0]
    except ValueError as error:
        message = _name_the_flag(" ".join(str(error).split()), parser, trainer_config.field_names())
        raise ConfigError(f"trainer flags after --: {message}") from None


def parse_known(parser, argv):
    """Returns ``parser.parse_known_args(argv)``, raising ``ValueError`` where argparse would exit.

    argparse prints a usage error and exits; a check needs the message instead.
    """

    def error(message):
        raise ValueError(message)

    parser.error = error  # This instance only: argparse reports every usage error through it.
    return parser.parse_known_args(list(argv))


def _unrecognized(unknown, parser):
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]
    known = [flag for action in parser._actions for flag in action.option_strings]
    close = difflib.get_close_matches(flags[0], known, n=1) if flags else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unrecognized arguments: {' '.join(unknown)}{hint}"


def _recipe_candidates(flags):
    # With --steps-per-epoch a modern recipe's budget counts the training images, which
    # only the data knows: offer both budgets' settings rather than read gs:// here.
    from trainer import config as trainer_config
    from trainer import recipe
    from trainer import task as trainer_task

    name = flags.get("recipe", trainer_config.TrainConfig.recipe)
    if name == "book" or flags.get("steps_per_epoch") is None:
        return [trainer_task.recipe_settings(flags)]
    epochs = flags.get("epochs", trainer_config.TrainConfig.epochs)
    return [recipe.settings(name, epochs=epochs, run_passes=p) for p in (0, recipe.LONG_RUN_PASSES)]


def _name_the_flag(message, parser, fields):
    # TrainConfig names its fields ("epochs must be >= 1"); a user of the command line wrote "--epochs".
    name = message.split(" ", 1)[0]
    flag = "--" + name.replace("_", "-")
    known = {option for action in parser._actions for option in action.option_strings}
    if name in fields and flag in known:
        return flag + message[len(name) :]
    return message
