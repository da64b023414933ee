"""Top-5 predictions for image files: ``python -m trainer.predict --model J img.jpg gs://b/x.png``.

``--model`` takes a job dir ``J`` (its ``model.keras`` and ``config.json``
give the model and its evaluation transform) or a ``.keras`` file (the
transform is inferred: images larger than the model input are centre-cropped).
Every image is decoded with PIL (JPEG, PNG, grayscale, ...), resized to the
dataset's image size when it differs, then given the evaluation transform, so
the model sees what it saw in evaluation. Class names come from ``--classes``,
``--data-dir``'s metadata.json, ``J/classes.json`` or the metadata.json of
the data dir named in ``J/config.json``, in that order.

Prints a table per image (``--json``: one JSON document); ``--gradcam DIR``
saves an original | heatmap | overlay panel per image. An unreadable image is
reported on stderr and the others still run (exit code 1); bad arguments end
with one line on stderr and exit code 2.
"""

import argparse
import dataclasses
import io
import json
import os
import sys
import tempfile

import numpy as np
from PIL import Image

from preprocessing import schema
from trainer import augment, storage
from trainer import config as config_lib

DEFAULT_IMAGE_SIZE = 64
TOP_K = 5


class ModelLoadError(ValueError):
    """The model, its job dir or its class list cannot be used."""


def read_bytes(path):
    """Reads a local file or a ``gs://`` object (google-cloud-storage; anonymous on an emulator)."""
    if storage.is_gcs(path):
        from google.api_core import exceptions

        bucket, name = storage.split_gcs(path)
        try:
            return storage.gcs_client().bucket(bucket).blob(name).download_as_bytes()
        except exceptions.NotFound:
            raise FileNotFoundError(f"{path}: no such object") from None
    with open(path, "rb") as f:
        return f.read()


def _exists(path):
    if storage.is_gcs(path):
        bucket, name = storage.split_gcs(path)
        return storage.gcs_client().bucket(bucket).blob(name).exists()
    return os.path.exists(path)


def decode_image(data):
    """Decodes image bytes of any PIL format to uint8 RGB ``[H, W, 3]``."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


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


def _job_config(job_dir):
    """Returns the job dir's ``config.json`` as a dict (empty when there is none)."""
    path = storage.join(job_dir, config_lib.CONFIG_FILE)
    if not _exists(path):
        return {}
    try:
        config = json.loads(read_bytes(path))
    except ValueError as error:
        raise ModelLoadError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _metadata_classes(data_dir):
    path = storage.join(data_dir, schema.METADATA_FILE)
    try:
        metadata = schema.read_metadata_text(read_bytes(path).decode("utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: cannot read class names ({error})") from None
    return parse_class_list(json.dumps(metadata["classes"])), int(metadata["image_size"][0])


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
    """

    model: object
    input_size: int
    image_size: int
    policy: str
    crop_size: int
    class_names: tuple | None

    def prepare(self, images):
        """Turns uint8 RGB images of any sizes into the model's float32 ``[B, S, S, 3]`` input."""
        resized = []
        for image in images:
            if image.shape[:2] != (self.image_size, self.image_size):
                image = np.asarray(
                    Image.fromarray(image).resize((self.image_size, self.image_size), Image.BILINEAR)
                )
            resized.append(image)
        batch = np.stack(resized).astype(np.float32)
        return np.asarray(augment.eval_transform(self.policy, batch, self.image_size, self.crop_size))

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


def _load_keras(path):
    import keras

    from trainer import models

    try:
        if storage.is_gcs(path):
            # A temporary copy, removed once loaded: a model can weigh hundreds of MB.
            with tempfile.TemporaryDirectory(prefix="model-") as folder:
                local = os.path.join(folder, config_lib.MODEL_FILE)
                with open(local, "wb") as f:
                    f.write(read_bytes(path))
                model = keras.saving.load_model(local, compile=False)
        else:
            model = keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: cannot load the model ({error})") from None
    if len(model.outputs) > 1:
        model = models.main_output_model(model)
    return model


def load(model_path, *, data_dir=None, classes=None):
    """Loads a job dir or ``.keras`` file for prediction and explanation.

    Args:
        model_path: Job dir (local or ``gs://``) holding ``model.keras``, or a ``.keras`` file.
        data_dir: Optional dataset folder whose metadata.json gives class names and image size.
        classes: Optional classes file (see :func:`parse_class_list`).

    Returns:
        A :class:`Predictor`.

    Raises:
        ModelLoadError: When the model or a named classes source is missing or unusable.
    """
    model_path = str(model_path).rstrip("/")
    if model_path.endswith(".keras"):
        model_file, job_dir = model_path, None
    else:
        job_dir = model_path
        model_file = storage.join(job_dir, config_lib.MODEL_FILE)
    if not _exists(model_file):
        raise ModelLoadError(
            f"{model_file}: model not found (give a job dir with {config_lib.MODEL_FILE} or a .keras file)"
        )
    config = _job_config(job_dir) if job_dir else {}
    model = _load_keras(model_file)

    names, image_size = None, None
    if classes:
        try:
            names = parse_class_list(read_bytes(classes).decode("utf-8"))
        except OSError as error:
            raise ModelLoadError(f"{classes}: cannot read classes ({error})") from None
    if data_dir:
        found, image_size = _metadata_classes(data_dir)
        names = names or found
    if names is None and job_dir and _exists(storage.join(job_dir, config_lib.CLASSES_FILE)):
        names = parse_class_list(read_bytes(storage.join(job_dir, config_lib.CLASSES_FILE)).decode("utf-8"))
    if (names is None or image_size is None) and config.get("data_dir"):
        try:
            found, image_size = _metadata_classes(config["data_dir"])
            names = names or found
        except ModelLoadError as error:
            print(f"warning: {error}", file=sys.stderr)

    input_size = int(model.inputs[0].shape[1])
    if config.get("policy"):
        policy, crop_size = config["policy"], int(config.get("crop_size", input_size))
        image_size = image_size or DEFAULT_IMAGE_SIZE
    else:
        # No recorded policy: crop to the model's input when it is smaller than the images.
        image_size = max(image_size or DEFAULT_IMAGE_SIZE, input_size)
        policy, crop_size = ("crop" if input_size < image_size else "none"), input_size
    if augment.output_size(policy, image_size, crop_size) != input_size:
        raise ModelLoadError(
            f"{model_path}: policy {policy!r} turns {image_size}px images into "
            f"{augment.output_size(policy, image_size, crop_size)}px, but the model takes {input_size}px"
        )
    return Predictor(model, input_size, image_size, policy, crop_size, names)


def top_k(probabilities, k=TOP_K):
    """Returns ``[(index, probability)]`` of the ``k`` most probable classes, best first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(int(i), float(probabilities[i])) for i in order]


class _Parser(argparse.ArgumentParser):
    """Reports usage errors as one line on stderr with exit code 2."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser():
    """Returns the command-line parser."""
    parser = _Parser(prog="python -m trainer.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="Image files or gs:// URIs.")
    parser.add_argument("--model", required=True, help="Job dir (with model.keras) or a .keras file.")
    parser.add_argument("--data-dir", help="Dataset folder whose metadata.json names the classes.")
    parser.add_argument(
        "--classes", help="Classes file: JSON list, metadata-style JSON, or one name per line."
    )
    parser.add_argument("--top-k", type=int, default=TOP_K, help="Number of classes to print.")
    parser.add_argument("--json", action="store_true", help="Print one JSON document instead of tables.")
    parser.add_argument(
        "--gradcam", metavar="DIR", help="Save an original|heatmap|overlay panel per image here."
    )
    parser.add_argument("--method", default="gradcam", help="Explanation method for --gradcam.")
    return parser


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """The resolved command line of :func:`main`."""

    model: str
    images: tuple
    data_dir: str | None = None
    classes: str | None = None
    top_k: int = TOP_K
    json: bool = False
    gradcam: str | None = None
    method: str = "gradcam"

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")


def _read_images(paths):
    images, failures = {}, {}
    for path in paths:
        try:
            images[path] = decode_image(read_bytes(path))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            failures[path] = f"cannot read image ({error})"
    return images, failures


def _panel_names(paths):
    names, used = {}, set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0] or "image"
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name)
        names[path] = f"{name}.png"
    return names


def _save_gradcam(predictor, config, batch, probabilities, paths):
    from explain import gradcam, render

    explainer = gradcam.Explainer(predictor.model, method=config.method)
    predicted = probabilities.argmax(axis=1)
    maps = explainer(batch, predicted)
    names = _panel_names(paths)
    saved = {}
    for path, image, heatmap, index, probs in zip(paths, batch, maps, predicted, probabilities, strict=True):
        target = storage.join(config.gradcam, names[path])
        render.save_png(render.panel(image, heatmap, None, predictor.class_name(index), probs[index]), target)
        saved[path] = target
    return saved


def run(config, out=None, err=None):
    """Predicts every image of ``config``; returns the exit code (1 when an image failed).

    Tables or JSON go to ``out``, one line per unreadable image to ``err``
    (default: the current ``sys.stdout`` and ``sys.stderr``).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    predictor = load(config.model, data_dir=config.data_dir, classes=config.classes)
    if config.gradcam:
        from explain import gradcam

        gradcam.check_method(config.method)
    images, failures = _read_images(config.images)
    for path, message in failures.items():
        print(f"error: {path}: {message}", file=err)
    paths = [p for p in config.images if p in images]
    results = []
    if paths:
        batch = predictor.prepare([images[p] for p in paths])
        probabilities = predictor.predict(batch)
        saved = _save_gradcam(predictor, config, batch, probabilities, paths) if config.gradcam else {}
        for path, probs in zip(paths, probabilities, strict=True):
            top = [
                {"rank": rank, "index": i, "class": predictor.class_name(i), "probability": p}
                for rank, (i, p) in enumerate(top_k(probs, config.top_k), start=1)
            ]
            results.append({"image": path, "top": top, **({"gradcam": saved[path]} if path in saved else {})})
    if config.json:
        errors = [{"image": path, "error": message} for path, message in failures.items()]
        json.dump({"predictions": results, "errors": errors}, out, indent=2)
        out.write("\n")
    else:
        for result in results:
            out.write(_table(result))
    return 1 if failures else 0


def _table(result):
    width = max(len(entry["class"]) for entry in result["top"])
    lines = [result["image"]]
    lines += [f"  {e['rank']}. {e['class']:<{width}}  {100 * e['probability']:6.2f}%" for e in result["top"]]
    if "gradcam" in result:
        lines.append(f"  gradcam: {result['gradcam']}")
    return "\n".join(lines) + "\n\n"


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = PredictConfig(
            model=args.model,
            images=tuple(args.images),
            data_dir=args.data_dir,
            classes=args.classes,
            top_k=args.top_k,
            json=args.json,
            gradcam=args.gradcam,
            method=args.method,
        )
        return run(config)
    except ValueError as error:  # ModelLoadError, unknown method, bad option values.
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
