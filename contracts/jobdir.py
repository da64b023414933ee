"""The job-dir contract: every file name of a training run's output and the one reader of it.

A job dir (local or ``gs://``) holds the run's ``config.json``, ``classes.json``,
``model.keras``, history, metrics and the folders of :data:`FOLDERS`;
docs/trainer.md ("The job dir") says what each holds and which ``AIP_*``
variables move the folders elsewhere.

Every JSON file is strict JSON (:func:`to_json`). The trainer writes them;
``trainer.predict``, ``trainer.evaluate``, ``explain.task`` and the demo
summary read them back through :func:`load` and :func:`read_json`.
"""

import dataclasses
import json
import sys
import zipfile
import zlib

import numpy as np

from contracts import policy as policy_lib
from contracts import storage

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class_accuracy.csv"
# trainer.evaluate's results: evaluation_test.json, evaluation_valid_tta-flip.json, ...
EVALUATION_FILE = "evaluation_{split}{tta}.json"
# Output folders: name -> folder below the job dir.
FOLDERS = {"logs": "logs", "checkpoints": "checkpoints", "backup": "backup", "export": "export"}
PLATEAU_PREFIX = "plateau-epoch-"
# explain.task's results, in its --logdir (the demo uses logs/explain).
EXPLAIN_RESULTS_FILE = "explain.json"
EXPLAIN_LOGS = "explain"
DEFAULT_IMAGE_SIZE = 64


class JobDirError(ValueError):
    """The job dir holds a run that this configuration cannot continue."""


class ModelLoadError(ValueError):
    """The model, its job dir or its class list cannot be used."""


def default_folders(job_dir):
    """Returns ``name -> uri`` of the output folders below ``job_dir`` (without Vertex AI overrides)."""
    root = str(job_dir).rstrip("/")
    return {name: f"{root}/{folder}" for name, folder in FOLDERS.items()}


def plateau_folder(epoch):
    """Name of the plateau checkpoint written after ``epoch`` epochs (below ``checkpoints``)."""
    return f"{PLATEAU_PREFIX}{epoch:04d}"


def check_arch(job_dir, previous_config_text, arch):
    """Refuses a job dir that holds a run of another architecture.

    Args:
        job_dir: The job dir (named in the message).
        previous_config_text: Text of its ``config.json``, or ``None`` when there is none.
        arch: Architecture of this run.

    Raises:
        JobDirError: When ``config.json`` of an earlier run disagrees.
    """
    if previous_config_text is None:
        return
    previous = json.loads(previous_config_text)
    if previous.get("arch") != arch:
        raise JobDirError(
            f"job dir {job_dir} holds a run of architecture {previous.get('arch')!r}, "
            f"not {arch!r}; use another --job-dir"
        )


def check_classes(job_dir, previous_classes_text, classes):
    """Refuses a job dir whose earlier run trained on other classes.

    Resuming would restore a head of the wrong size (or silently mislabel
    classes), so a different class list is refused up front.

    Raises:
        JobDirError: When ``classes.json`` of an earlier run disagrees.
    """
    if previous_classes_text is None:
        return
    previous = [c["wnid"] for c in json.loads(previous_classes_text)]
    current = [c["wnid"] for c in classes]
    if previous != current:
        raise JobDirError(
            f"job dir {job_dir} holds a run on {len(previous)} other classes "
            f"(this dataset has {len(current)}); use another --job-dir"
        )


def to_json(value, **options):
    """Returns strict JSON text of ``value``: non-finite numbers are written as ``null``.

    Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON (RFC
    8259) and which many readers (``jq``, JavaScript, BigQuery) reject. Every
    JSON file of a job dir goes through here, so any JSON reader can read it.

    Args:
        value: Dicts, lists, strings, numbers (numpy scalars too), booleans, ``None``.
        **options: Passed to ``json.dumps`` (``indent``, ``sort_keys``).
    """
    return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value):
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def read_json(uri):
    """Returns the JSON value of a local or ``gs://`` file, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(storage.read_bytes(uri))
    except (OSError, ValueError):
        return None


def parse_class_list(text):
    """Reads class names from a classes file's text.

    Accepts a JSON list of names, a JSON list of ``{"index", "wnid", "name"}``
    (metadata.json's ``classes``), a JSON object with such a ``classes`` list,
    or plain text with one name per line.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list | dict):
        # Plain text; a file holding one name may also parse as a JSON number or string.
        return tuple(line.strip() for line in text.splitlines() if line.strip())
    if isinstance(value, dict):
        value = value.get("classes", [])
    if value and isinstance(value[0], dict):
        value = [entry["name"] for entry in sorted(value, key=lambda entry: entry.get("index", 0))]
    return tuple(str(name) for name in value)


def read_temperature(job_dir):
    """Returns the softmax temperature the run fitted (``metrics.json``'s ``calibration``), or ``None``.

    ``None`` for a ``.keras`` file alone (``job_dir`` ``None``), a run with ``--calibration none``
    and a job dir written before calibration existed.
    """
    metrics = read_json(storage.join(job_dir, METRICS_FILE)) if job_dir else None
    temperature = ((metrics or {}).get("calibration") or {}).get("temperature")
    return None if temperature is None else float(temperature)


def read_config(job_dir):
    """Returns the job dir's ``config.json`` as a dict (empty when there is none).

    Raises:
        ModelLoadError: When the file exists but is not a JSON object.
    """
    path = storage.join(job_dir, CONFIG_FILE)
    if not storage.exists(path):
        return {}
    try:
        config = json.loads(storage.read_bytes(path))
    except ValueError as error:
        raise ModelLoadError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:  # A FIFO or device in its place, a gs:// error.
        raise ModelLoadError(str(error)) from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _metadata_classes(data_dir):
    # Imported here: the schema pulls in TensorFlow, which the config and the
    # job-dir checks do not need.
    from contracts import resize, schema

    path = storage.join(data_dir, schema.METADATA_FILE)
    try:
        metadata = schema.read_metadata_text(storage.read_bytes(path).decode("utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: cannot read class names ({error})") from None
    classes = parse_class_list(json.dumps(metadata["classes"]))
    return classes, int(metadata["image_size"][0]), resize.policy_of(metadata)


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A loaded model with the input transform and class names it needs.

    Attributes:
        model: The single-output Keras model.
        input_size: Side of the model's input.
        image_size: Side of the dataset's images; inputs are resized to it first.
        policy: Augmentation policy whose evaluation transform is applied.
        crop_size: Crop side of the ``crop`` policy.
        class_names: Names in label order, or ``None`` when unknown.
        resize_policy: How inputs are made ``image_size`` square (:mod:`contracts.resize`): the
            dataset's, so a photo is resized as the preprocessing job resized its training images.
        temperature: The job's fitted softmax temperature (:func:`read_temperature`), or ``None``;
            :meth:`predict` gives the raw softmax, ``trainer.calibration`` applies it.
    """

    model: object
    input_size: int
    image_size: int
    policy: str
    crop_size: int
    class_names: tuple | None
    resize_policy: str
    temperature: float | None = None

    def prepare(self, images):
        """Turns uint8 RGB images of any sizes into the model's float32 ``[B, S, S, 3]`` input."""
        # Imported here: TensorFlow loads only when a model does.
        from contracts import resize

        resized = [np.asarray(resize.resize(image, self.image_size, self.resize_policy)) for image in images]
        batch = np.stack(resized).astype(np.float32)
        return np.asarray(policy_lib.eval_transform(self.policy, batch, self.image_size, self.crop_size))

    def predict(self, batch, batch_size=64):
        """Returns class probabilities ``[B, num_classes]`` of prepared images."""
        outputs = [
            self.model(batch[i : i + batch_size], training=False) for i in range(0, len(batch), batch_size)
        ]
        return np.concatenate([np.asarray(out, dtype=np.float32) for out in outputs])

    def class_name(self, index):
        """Returns the name of class ``index`` (``class_<index>`` when names are unknown)."""
        if self.class_names is None or index >= len(self.class_names):
            return f"class_{index}"
        return self.class_names[index]


def _check_archive(path, local):
    """Refuses a ``.keras`` file that is no zip archive, or one whose members fail their CRC-32.

    Keras answers "File not found" for a file that is no zip archive, and reads
    the weights' member without its checksum: a flipped byte would load as a
    silently different model. Reading every member once costs a fraction of the load.
    """
    try:
        with zipfile.ZipFile(local) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ModelLoadError(
            f"{path}: damaged file: not a readable .keras (zip) archive, truncated or no model ({error})"
        ) from None
    if bad is not None:
        raise ModelLoadError(f"{path}: damaged file: its member {bad} fails its CRC-32 check")


def _load_keras(path):
    # Imported here: Keras (and TensorFlow) load only when a model does; the
    # module also registers the custom layers a saved model needs.
    import keras

    from contracts import model as model_contract

    try:
        storage.check_file(path)  # A FIFO would block the loader, a device feed it forever.
        with storage.local_file(path) as local:
            _check_archive(path, local)
            model = keras.saving.load_model(local, compile=False)
    except (ModelLoadError, storage.UnreadableFileError) as error:
        raise ModelLoadError(str(error)) from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: cannot load the model ({error})") from None
    if len(model.outputs) > 1:
        model = model_contract.main_output_model(model)
    return model


def _read_class_file(path):
    try:
        return parse_class_list(storage.read_bytes(path).decode("utf-8"))
    except (OSError, ValueError) as error:  # Missing, a FIFO or device, not UTF-8.
        raise ModelLoadError(f"{path}: cannot read classes ({error})") from None
    except KeyError as error:
        raise ModelLoadError(f"{path}: cannot read classes (an entry has no {error})") from None


def _check_count(model_path, num_classes, names, what, where):
    if len(names) != num_classes:
        raise ModelLoadError(
            f"{model_path}: the model has {num_classes} classes, {what} {len(names)} ({where}); "
            "give the classes the model was trained on"
        )


def _class_names(model_path, model, job_dir, config, data_dir, classes):
    """Returns ``(names, image_size, resize_policy)`` from the first source that has them (see :func:`load`).

    A class list of another length than the model's output is refused, not padded with
    ``class_<i>`` names or cut: the names would belong to other classes.

    Raises:
        ModelLoadError: For an unreadable named source, or one naming another number of classes.
    """
    num_classes = int(model.outputs[0].shape[-1])
    names, image_size, resize_policy = None, None, None
    if classes:
        names = _read_class_file(classes)
        _check_count(model_path, num_classes, names, "the classes file names", classes)
    if data_dir:
        found, image_size, resize_policy = _metadata_classes(data_dir)
        _check_count(model_path, num_classes, found, "the dataset", data_dir)
        names = names or found
    classes_file = storage.join(job_dir, CLASSES_FILE) if job_dir else None
    if names is None and classes_file and storage.exists(classes_file):
        names = _read_class_file(classes_file)
        _check_count(model_path, num_classes, names, f"{CLASSES_FILE} names", classes_file)
    if (names is None or image_size is None) and config.get("data_dir"):
        try:
            found, image_size, resize_policy = _metadata_classes(config["data_dir"])
        except ModelLoadError as error:
            print(f"warning: {error}", file=sys.stderr)
        else:
            if names is None:
                _check_count(model_path, num_classes, found, "its training dataset", config["data_dir"])
                names = found
    return names, image_size, resize_policy


def load(model_path, *, data_dir=None, classes=None):
    """Loads a job dir or ``.keras`` file for prediction and explanation.

    Args:
        model_path: Job dir (local or ``gs://``) holding ``model.keras``, or a ``.keras`` file.
        data_dir: Optional dataset folder whose metadata.json gives class names and image size.
        classes: Optional classes file (see :func:`parse_class_list`).

    Returns:
        A :class:`Predictor`.

    Raises:
        ModelLoadError: When the model or a named classes source is missing or unusable (a
            damaged ``.keras`` file, a FIFO or device in a file's place), or when a class list
            names another number of classes than the model predicts.
    """
    model_path = str(model_path).rstrip("/")
    if model_path.endswith(".keras"):
        model_file, job_dir = model_path, None
    else:
        job_dir = model_path
        model_file = storage.join(job_dir, MODEL_FILE)
    if not storage.exists(model_file):
        raise ModelLoadError(
            f"{model_file}: model not found (give a job dir with {MODEL_FILE} or a .keras file)"
        )
    config = read_config(job_dir) if job_dir else {}
    model = _load_keras(model_file)
    names, image_size, resize_policy = _class_names(model_path, model, job_dir, config, data_dir, classes)

    input_size = int(model.inputs[0].shape[1])
    if config.get("policy"):
        policy, crop_size = config["policy"], int(config.get("crop_size", input_size))
        image_size = image_size or DEFAULT_IMAGE_SIZE
    else:
        # No recorded policy: crop to the model's input when it is smaller than the images.
        image_size = max(image_size or DEFAULT_IMAGE_SIZE, input_size)
        policy, crop_size = ("crop" if input_size < image_size else "none"), input_size
    produced = policy_lib.output_size(policy, image_size, crop_size)
    if produced != input_size:
        raise ModelLoadError(
            f"{model_path}: policy {policy!r} turns {image_size}px images into "
            f"{produced}px, but the model takes {input_size}px"
        )
    from contracts import resize  # Imported here: TensorFlow, loaded with the model by now.

    # No metadata.json: the default, as for a dataset written before the policy was recorded.
    resize_policy = resize_policy or resize.DEFAULT_POLICY
    temperature = read_temperature(job_dir)
    return Predictor(model, input_size, image_size, policy, crop_size, names, resize_policy, temperature)
