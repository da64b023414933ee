"""The export's ``explain`` and ``preprocess`` signatures, PNG input, and predict through an export.

A minception (the fastest registered architecture) is exported once per module
by :func:`trainer.export.export_model`, as the trainer does, into a job dir
with its ``model.keras``. Its ``explain`` heatmaps are compared with
tf-keras-vis' Grad-CAM (:class:`explain.gradcam.Explainer`) on the very pixels
the export feeds the model. The two compute the same float32 steps in another
order (tf-keras-vis zooms in SciPy, in float64), which measures below 1e-6; the
tolerance of 1e-4 leaves room for other CPUs while any change of method fails
by orders of magnitude: half-pixel-centre resizing instead of SciPy's
corner-aligned zoom, or the gradient of the probability or the log-probability
instead of the logit, each move this model's maps by more than 0.25. The model
is not trained (a few CPU steps cost a minute and change nothing the
comparison needs); a hand-set model with a known answer checks that the
heatmap points where the evidence is.
"""

import io
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import dataset, jobdir, resize, schema, storage
from explain import gradcam, render
from trainer import export, models, predict

ARCH = "minception"
IMAGE_SIZE, CROP = 64, 56
TOLERANCE = 1e-4
# The dataset's resize policy, not the default: export_model must take it from the DatasetInfo.
# The sample's 64x64 images are left as they are by every policy.
RESIZE = "pad"


def _trainer_pixels(data):
    """What the trainer's input pipeline gives the model: decode_jpeg, then the centre crop."""
    offset = (IMAGE_SIZE - CROP) // 2
    image = schema.decode_jpeg(data).numpy().astype(np.float32)
    return image[offset : offset + CROP, offset : offset + CROP]


def _info(wnids, names, image_size):
    return dataset.DatasetInfo(
        data_dir="",
        source_dir="",
        num_classes=len(wnids),
        class_names=tuple(names),
        wnids=tuple(wnids),
        image_size=image_size,
        split_counts={},
        shards={},
        metadata={"resize": {"policy": RESIZE, "size": image_size}},
    )


@pytest.fixture(scope="module")
def job(sample_raw, tmp_path_factory):
    """A job dir as the trainer leaves it: config.json, classes.json, model.keras and export/."""
    _, raw = sample_raw
    names = [f"class {wnid}" for wnid in raw["wnids"]]
    model = models.build_model(ARCH, len(names), input_size=CROP, seed=4)
    root = tmp_path_factory.mktemp("serving-job")
    model.save(str(root / jobdir.MODEL_FILE))
    (root / jobdir.CONFIG_FILE).write_text(json.dumps({"arch": ARCH, "policy": "crop", "crop_size": CROP}))
    classes = [
        {"index": i, "wnid": w, "name": n} for i, (w, n) in enumerate(zip(raw["wnids"], names, strict=True))
    ]
    (root / jobdir.CLASSES_FILE).write_text(json.dumps(classes))
    info = _info(raw["wnids"], names, IMAGE_SIZE)
    options = {"input_size": CROP}
    export.export_model(
        model,
        str(root / "export"),
        arch=ARCH,
        build_options=options,
        info=info,
        policy="crop",
        crop_size=CROP,
    )
    return str(root), model


@pytest.fixture(scope="module")
def loaded(job):
    return tf.saved_model.load(os.path.join(job[0], "export"))


@pytest.fixture(scope="module")
def encoded(sample_raw, tmp_path_factory):
    """Three validation JPEGs, and PNGs of exactly the pixels the trainer decodes from them."""
    raw_dir, raw = sample_raw
    jpegs = [os.path.join(raw_dir, "val", "images", name) for name in sorted(raw["val"])[:3]]
    root = tmp_path_factory.mktemp("serving-images")
    pngs = []
    for path in jpegs:
        decoded = schema.decode_jpeg(open(path, "rb").read()).numpy()
        pngs.append(str(root / (os.path.splitext(os.path.basename(path))[0] + ".png")))
        Image.fromarray(decoded).save(pngs[-1])
    return {"jpeg": jpegs, "png": pngs}


def _bytes(paths):
    return tf.constant([open(p, "rb").read() for p in paths])


def test_export_has_the_three_signatures_over_image_bytes(loaded):
    assert {"serving_default", "explain", "preprocess"} <= set(loaded.signatures)
    for name in ("serving_default", "explain", "preprocess"):
        _, inputs = loaded.signatures[name].structured_input_signature
        assert inputs == {"images": tf.TensorSpec([None], tf.string, name="images")}


@pytest.mark.parametrize("form", ["jpeg", "png"])
def test_explain_matches_serving_and_tf_keras_vis(job, loaded, encoded, form):
    _, model = job
    images = _bytes(encoded[form])
    served = loaded.signatures["serving_default"](images=images)
    explained = loaded.signatures["explain"](images=images)
    for key in ("classes", "wnids", "names"):
        np.testing.assert_array_equal(explained[key].numpy(), served[key].numpy())
    np.testing.assert_allclose(explained["probabilities"].numpy(), served["probabilities"].numpy(), atol=1e-6)

    heatmap, peak = explained["heatmap"].numpy(), explained["peak"].numpy()
    assert heatmap.shape == (3, CROP, CROP) and heatmap.dtype == np.float32
    assert peak.shape == (3, 2) and peak.dtype == np.int32
    assert heatmap.min() >= 0.0 and np.all(heatmap.max(axis=(1, 2)) > 0.99)
    for image_map, (y, x) in zip(heatmap, peak, strict=True):
        assert (y, x) == np.unravel_index(np.argmax(image_map), image_map.shape)

    pixels = loaded.signatures["preprocess"](images=images)["pixels"].numpy()
    # The model input is the trainer's: decode_jpeg (PNG: the same pixels) and the centre crop.
    expected = np.stack([_trainer_pixels(open(p, "rb").read()) for p in encoded["jpeg"]])
    np.testing.assert_array_equal(pixels, expected)
    reference = gradcam.Explainer(model, "gradcam", models.get_defaults(ARCH).feature_layer)(
        pixels, explained["classes"].numpy()[:, 0]
    )
    assert np.abs(heatmap - reference).max() < TOLERANCE


def test_the_export_resizes_by_the_datasets_policy(job, loaded, encoded):
    root, _ = job
    with open(os.path.join(root, "export", export.SETTINGS_FILE)) as f:
        assert json.load(f)["resize"] == {"policy": RESIZE, "size": IMAGE_SIZE}
    # A 90x40 strip: letterboxed to 64x64 (black bands above and below), then centre-cropped.
    strip = np.asarray(Image.open(encoded["png"][0]).resize((90, 40), Image.BICUBIC))
    pixels = loaded.signatures["preprocess"](images=tf.constant([_png(strip)]))["pixels"].numpy()[0]
    offset = (IMAGE_SIZE - CROP) // 2
    expected = resize.resize(strip, IMAGE_SIZE, RESIZE).numpy()[offset:-offset, offset:-offset]
    np.testing.assert_array_equal(pixels, expected.astype(np.float32))
    assert not pixels[0].any()


def test_png_is_served_like_the_jpeg_it_holds(loaded, encoded):
    jpeg = loaded.signatures["serving_default"](images=_bytes(encoded["jpeg"]))
    png = loaded.signatures["serving_default"](images=_bytes(encoded["png"]))
    assert set(png) == {"classes", "wnids", "names", "probabilities"}
    np.testing.assert_array_equal(png["classes"].numpy(), jpeg["classes"].numpy())
    np.testing.assert_allclose(png["probabilities"].numpy(), jpeg["probabilities"].numpy(), atol=1e-6)


# A panel without a true class has one title line (the prediction) above its tiles.
PANEL_SHAPE = (
    render.GAP + render.FONT_SIZE + 3 + render.TILE + render.GAP,
    3 * render.TILE + 4 * render.GAP,
    3,
)


def test_predict_with_the_export_agrees_with_the_job_dir(job, encoded, tmp_path, capsys):
    root, _ = job
    # PNGs: PIL (the job dir's decoder) and TensorFlow (the export's) read them
    # alike, whereas their JPEG decoders differ by a few levels.
    images = encoded["png"]
    assert predict.main(["--model", root, "--json", *images]) == 0
    from_job = json.loads(capsys.readouterr().out)["predictions"]
    out = str(tmp_path / "cams")
    argv = ["--model", os.path.join(root, "export"), "--json", "--gradcam", out, "--top-k", "3"]
    assert predict.main([*argv, *images, encoded["jpeg"][0]]) == 0
    from_export = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["image"] for p in from_export] == [*images, encoded["jpeg"][0]]
    for job_result, export_result in zip(from_job, from_export[:3], strict=True):
        assert [entry["rank"] for entry in export_result["top"]] == [1, 2, 3]
        assert export_result["top"] == [
            {**entry, "probability": pytest.approx(entry["probability"], abs=1e-5)}
            for entry in job_result["top"][:3]
        ]
    for result in from_export:
        assert os.path.dirname(result["gradcam"]) == out
        with open(result["gradcam"], "rb") as f:
            assert np.asarray(Image.open(io.BytesIO(f.read()))).shape == PANEL_SHAPE
    assert len(os.listdir(out)) == 4  # The JPEG's panel is named apart from its PNG's.


def test_predict_table_with_the_export(job, encoded, capsys):
    root, _ = job
    assert predict.main(["--model", os.path.join(root, "export"), encoded["jpeg"][0]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == encoded["jpeg"][0] and len(lines) == 6
    assert all(line.strip().startswith(f"{rank}. class ") for rank, line in enumerate(lines[1:], start=1))


def test_predict_with_the_export_reports_a_broken_image_and_runs_the_others(job, encoded, tmp_path, capsys):
    root, _ = job
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    argv = ["--model", os.path.join(root, "export"), "--json", str(broken), encoded["png"][0]]
    assert predict.main(argv) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: cannot read image")
    document = json.loads(captured.out)
    assert [p["image"] for p in document["predictions"]] == [encoded["png"][0]]


def test_predict_with_an_export_in_a_bucket(job, encoded, tmp_path, gcs_bucket, capsys):
    root, _ = job
    local = os.path.join(root, "export")
    bucket = storage.gcs_client().bucket(gcs_bucket)
    for folder, _, files in os.walk(local):
        for name in files:
            path = os.path.join(folder, name)
            bucket.blob(f"job/export/{os.path.relpath(path, local)}").upload_from_filename(path)
    argv = ["--json", "--gradcam", str(tmp_path / "cams"), encoded["png"][0]]
    assert predict.main(["--model", f"gs://{gcs_bucket}/job/export/", *argv]) == 0
    remote = json.loads(capsys.readouterr().out)["predictions"]
    assert predict.main(["--model", local, *argv]) == 0
    assert remote == json.loads(capsys.readouterr().out)["predictions"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gradcam", "{tmp}/g", "--method", "gradcam++"], "explains with gradcam only"),
        (["--classes", "{tmp}/names.txt"], "do not apply to a SavedModel export"),
    ],
)
def test_predict_with_the_export_refuses_what_it_cannot_do(job, tmp_path, capsys, extra, message):
    root, _ = job
    argv = ["--model", os.path.join(root, "export"), *[a.format(tmp=tmp_path) for a in extra], "x.png"]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_predict_with_an_unreadable_export_is_one_line(tmp_path, capsys):
    (tmp_path / "saved_model.pb").write_bytes(b"not a SavedModel")
    assert predict.main(["--model", str(tmp_path), "x.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}: cannot load the SavedModel")


SIZE = 32
# The window (rows, cols, inclusive) the hand-set model's class 0 looks at: off
# centre and not square-symmetric, so a transposed or flipped map fails.
ROWS, COLS = (4, 11), (20, 27)


def _window_model():
    """A model whose class-0 logit sums the brightness inside ROWS x COLS (and nothing else)."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")
    crop = ((ROWS[0], SIZE - 1 - ROWS[1]), (COLS[0], SIZE - 1 - COLS[1]))
    x = keras.layers.Cropping2D(crop, name="window_crop")(conv(inputs))
    x = keras.layers.ZeroPadding2D(crop, name="window")(x)
    dense = keras.layers.Dense(3, name="logits")
    logits = dense(keras.layers.GlobalAveragePooling2D(name="pool")(x))
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="predictions")(logits))
    kernel = np.zeros((3, 3, 3, 4), np.float32)
    kernel[1, 1] = 1.0 / 255.0
    conv.set_weights([kernel, np.zeros(4, np.float32)])
    weights = np.full((4, 3), -1.0, np.float32)
    weights[:, 0] = 2.0
    dense.set_weights([weights, np.zeros(3, np.float32)])
    return model


def _png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_heatmap_points_at_the_evidence_and_is_zero_without_any(tmp_path):
    folder = str(tmp_path / "window-export")
    export.export_saved_model(
        _window_model(),
        folder,
        layer="window",
        wnids=["n0", "n1", "n2"],
        class_names=["zero", "one", "two"],
        image_size=SIZE,
        policy="none",
        crop_size=SIZE,
    )
    rng = np.random.default_rng(0)
    noisy = rng.uniform(0, 255, (SIZE, SIZE, 3))
    noisy[22:30, 2:10] = 255  # A bright patch outside the window must not attract the map.
    black = np.zeros((SIZE, SIZE, 3))
    explain = tf.saved_model.load(folder).signatures["explain"]
    out = explain(images=tf.constant([_png(noisy), _png(black)]))
    assert out["classes"].numpy()[:, 0].tolist() == [0, 0]  # Black: a tie, broken towards class 0.
    heatmap, peak = out["heatmap"].numpy(), out["peak"].numpy()
    (y, x), (y_black, x_black) = peak
    assert ROWS[0] <= y <= ROWS[1] and COLS[0] <= x <= COLS[1]
    # Max 1 but for tf-keras-vis' epsilon: range / (range + 1e-7).
    assert heatmap[0].max() == pytest.approx(1.0, abs=1e-4)
    assert heatmap[0, 22:30, 2:10].max() < 0.2
    # Nothing in the layer supports the class in a black image: an all-zero map.
    assert not heatmap[1].any() and (y_black, x_black) == (0, 0)
