"""Top-5 predictions for image files: ``python -m trainer.predict --model J img.jpg gs://b/x.png``.

``--model`` takes a job dir ``J`` (its ``model.keras`` and ``config.json``
give the model and its evaluation transform), a ``.keras`` file (the
transform is inferred: images larger than the model input are centre-cropped)
or a SavedModel export folder such as ``J/export`` (it holds ``saved_model.pb``).
For a job dir or a ``.keras`` file every image is decoded with PIL (JPEG, PNG,
grayscale, ...), made the dataset's square size by the dataset's resize policy
(:func:`contracts.resize.resize`, as the preprocessing job made its records;
``crop`` when no metadata.json names one), then given the evaluation transform,
so the model sees what it saw in evaluation.
Class names come from ``--classes``, ``--data-dir``'s metadata.json,
``J/classes.json`` or the metadata.json of the data dir named in
``J/config.json``, in that order. An export does all of that itself: the bytes
go through its signatures (``serving_default``; ``explain`` for ``--gradcam``,
Grad-CAM only), which name the classes and return at most 5 of them.

Prints a table per image (``--json``: one JSON document); ``--gradcam DIR``
saves an original | heatmap | overlay panel per image. An unreadable image is
reported on stderr and the others still run (exit code 1); bad arguments (a
``--gradcam`` folder that is a file included) end with one line on stderr and
exit code 2.
"""

import dataclasses
import os
import sys

import numpy as np
from PIL import Image

# First, before anything imports TensorFlow: it reads its log settings once, when it loads.
from contracts import quiet

if __name__ == "__main__":
    quiet.quiet_tensorflow()

from contracts import cli, jobdir, storage, voice
from contracts import images as rgb_images

TOP_K = 5
# Images read and predicted together: bounds the memory of a call over many files.
BATCH_SIZE = 64


def decode_image(data):
    """Decodes image bytes of any PIL format to uint8 RGB ``[H, W, 3]``.

    The conversion is the preprocessing job's (:func:`contracts.images.to_rgb`:
    16-bit scaled, transparency composited on white), so a file gives the
    model the pixels its training record held.

    Raises:
        ValueError: For a header announcing more than ``contracts.images.MAX_PIXELS``
            pixels (checked before decoding) or a mode with no RGB conversion.
        OSError: For bytes PIL cannot decode.
    """
    with rgb_images.open_image(data) as image:
        image.load()
        return rgb_images.to_rgb(image)


def top_k(probabilities, k=TOP_K):
    """Returns ``[(index, probability)]`` of the ``k`` most probable classes, best first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(int(i), float(probabilities[i])) for i in order]


def build_parser():
    """Returns the command-line parser."""
    parser = cli.ArgumentParser(prog="python -m trainer.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="Image files or gs:// URIs.")
    parser.add_argument(
        "--model",
        required=True,
        help="Job dir (with model.keras), a .keras file or a SavedModel export folder.",
    )
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
    quiet.add_verbose_flag(parser)
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


def _read_files(paths, convert):
    """Reads every file through ``convert``; returns ``({path: value}, {path: message})``."""
    values, failures = {}, {}
    for path in paths:
        try:
            values[path] = convert(storage.read_bytes(path))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            failures[path] = f"cannot read image ({error})"
    return values, failures


def _checked_bytes(content):
    """Returns ``content`` after refusing a header that announces too many pixels."""
    with rgb_images.open_image(content):
        pass
    return content


def _top_entries(indices, names, probabilities, k):
    """The ``top`` list of one result: rank, index, class and probability, best first."""
    rows = zip(indices, names, probabilities, strict=True)
    return [
        {"rank": rank, "index": int(index), "class": name, "probability": float(probability)}
        for rank, (index, name, probability) in enumerate(rows, start=1)
    ][:k]


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


def _batches(paths, speaker):
    """Yields ``paths`` :data:`BATCH_SIZE` at a time; over more than one batch, counts them on ``speaker``.

    A single batch (the common one-image call) stays silent: its answer comes at once.
    """
    batch_size = BATCH_SIZE
    steps = speaker.progress(len(paths), "images") if len(paths) > batch_size else None
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        yield batch
        if steps:
            steps.advance(len(batch))
    if steps:
        steps.close()


def _predict_keras(config, err, speaker):
    predictor = jobdir.load(config.model, data_dir=config.data_dir, classes=config.classes)
    explainer = None
    if config.gradcam:
        from explain import gradcam

        explainer = gradcam.Explainer(predictor.model, method=config.method)
    names = _panel_names(config.images)
    results, failures = [], {}
    for chunk in _batches(list(config.images), speaker):
        images, failed = _read_files(chunk, decode_image)
        _report(failed, err)
        failures.update(failed)
        paths = [p for p in chunk if p in images]
        if not paths:
            continue
        batch = predictor.prepare([images[p] for p in paths])
        probabilities = predictor.predict(batch)
        maps = explainer(batch, probabilities.argmax(axis=1)) if explainer else [None] * len(paths)
        for path, image, heatmap, probs in zip(paths, batch, maps, probabilities, strict=True):
            indices = [i for i, _ in top_k(probs, config.top_k)]
            top = _top_entries(
                indices, [predictor.class_name(i) for i in indices], probs[indices], config.top_k
            )
            result = {"image": path, "top": top}
            if explainer:
                result["gradcam"] = storage.join(config.gradcam, names[path])
                _save_panel(result["gradcam"], image, heatmap, top[0]["class"], top[0]["probability"])
            results.append(result)
    return results, failures


def _check_export_options(config, model):
    from trainer import export

    if config.classes or config.data_dir:
        raise ValueError(
            "--classes and --data-dir do not apply to a SavedModel export: its signatures name the classes"
        )
    if config.gradcam:
        if config.method != "gradcam":
            raise ValueError(
                f"a SavedModel export explains with gradcam only, not {config.method!r}; "
                "give the job dir for other methods"
            )
        for name in (export.EXPLAIN_SIGNATURE, export.PREPROCESS_SIGNATURE):
            if not model.has(name):
                raise ValueError(f"{model.path}: the SavedModel has no {name!r} signature; export it again")


def _readable_by_export(model, paths, err):
    """Reads ``paths`` and checks each alone through the export's cheapest signature.

    Returns:
        ``({path: bytes}, {path: pixels or None}, {path: message})``: a file the export
        cannot decode then fails alone instead of failing its whole batch.
    """
    from trainer import export

    data, failures = _read_files(paths, _checked_bytes)
    check = export.PREPROCESS_SIGNATURE if model.has(export.PREPROCESS_SIGNATURE) else export.SIGNATURE
    pixels = {}
    for path in list(data):
        try:
            pixels[path] = model(check, [data[path]]).get("pixels", [None])[0]
        except export.ImageDecodeError as error:
            failures[path] = f"cannot read image ({error})"
            del data[path]
    _report(failures, err)
    return data, pixels, failures


def _predict_export(config, err, speaker):
    from trainer import export

    model = export.LoadedExport(config.model)
    _check_export_options(config, model)
    signature = export.EXPLAIN_SIGNATURE if config.gradcam else export.SIGNATURE
    names = _panel_names(config.images)
    results, failures = [], {}
    for chunk in _batches(list(config.images), speaker):
        data, pixels, failed = _readable_by_export(model, chunk, err)
        failures.update(failed)
        paths = [p for p in chunk if p in data]
        if not paths:
            continue
        outputs = model(signature, [data[p] for p in paths])
        for row, path in enumerate(paths):
            classes = export.decode_names(outputs["names"][row])
            top = _top_entries(outputs["classes"][row], classes, outputs["probabilities"][row], config.top_k)
            result = {"image": path, "top": top}
            if config.gradcam:
                result["gradcam"] = storage.join(config.gradcam, names[path])
                best = top[0]
                heatmap = outputs["heatmap"][row]
                _save_panel(result["gradcam"], pixels[path], heatmap, best["class"], best["probability"])
            results.append(result)
    return results, failures


def _save_panel(target, pixels, heatmap, name, probability):
    from explain import render

    render.save_png(render.panel(pixels, heatmap, None, name, probability), target)


def _report(failures, err):
    for path, message in failures.items():
        print(f"error: {path}: {message}", file=err)


def run(config, out=None, err=None):
    """Predicts every image of ``config``; returns the exit code (1 when an image failed).

    Tables or JSON go to ``out``, one line per unreadable image to ``err``
    (default: the current ``sys.stdout`` and ``sys.stderr``).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    # Imported here, as Keras is for the other paths: --help needs no TensorFlow.
    from trainer import export

    speaker = voice.Voice("predict", err)
    if export.is_export(config.model):
        results, failures = _predict_export(config, err, speaker)
    else:
        results, failures = _predict_keras(config, err, speaker)
    if config.json:
        errors = [{"image": path, "error": message} for path, message in failures.items()]
        out.write(jobdir.to_json({"predictions": results, "errors": errors}, indent=2))
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
        cli.check_writable_dir(config.gradcam, "--gradcam")
        return run(config)
    except ValueError as error:  # ModelLoadError, unknown method, bad option values.
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
