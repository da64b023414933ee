"""python -m trainer.predict on JPEG, PNG, grayscale, broken and gs:// images, with Grad-CAM panels."""

import io
import json
import os
import re

import keras
import numpy as np
import pytest
from PIL import Image

from contracts import storage
from explain import render
from tests.explain import NUM_CLASSES, tiny_cnn
from trainer import predict


def _model(input_size):
    keras.utils.set_random_seed(3)
    return tiny_cnn(input_size, NUM_CLASSES, filters=(8,))


@pytest.fixture(scope="module")
def job(sample_records, tmp_path_factory):
    """A job dir of a crop-policy model (input 56) whose config names the sample's data dir."""
    data_dir, metadata = sample_records
    root = tmp_path_factory.mktemp("predict-job")
    _model(56).save(str(root / "model.keras"))
    config = {"arch": "tiny", "policy": "crop", "crop_size": 56, "data_dir": data_dir}
    (root / "config.json").write_text(json.dumps(config))
    return str(root), [c["name"] for c in metadata["classes"]]


@pytest.fixture(scope="module")
def images(sample_raw, tmp_path_factory):
    """One sample JPEG, the same picture as a 100x80 PNG, a grayscale JPEG and a broken file."""
    raw_dir, info = sample_raw
    wnid = info["wnids"][0]
    source = os.path.join(raw_dir, "train", wnid, "images", f"{wnid}_0.JPEG")
    root = tmp_path_factory.mktemp("images")
    picture = Image.open(source).convert("RGB")
    paths = {"jpeg": source, "png": str(root / "wide.png"), "gray": str(root / "gray.jpg")}
    picture.resize((100, 80)).save(paths["png"])
    picture.convert("L").save(paths["gray"])
    paths["broken"] = str(root / "broken.jpg")
    with open(paths["broken"], "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return paths


def test_table_output_and_broken_file(job, images, capsys):
    model_dir, names = job
    argv = ["--model", model_dir, images["jpeg"], images["broken"], images["png"], images["gray"]]
    assert predict.main(argv) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {images['broken']}: cannot read image")
    for key in ("jpeg", "png", "gray"):
        assert images[key] in captured.out
    assert images["broken"] not in captured.out
    # Five ranked lines per image, named from the data dir's metadata.json.
    ranked = [
        line for line in captured.out.splitlines() if line.strip()[:2] in {f"{k}." for k in range(1, 6)}
    ]
    assert len(ranked) == 15
    assert all(any(name in line for name in names) and line.rstrip().endswith("%") for line in ranked)


def test_json_output_parses_and_matches_the_model(job, images, capsys):
    model_dir, names = job
    assert predict.main(["--model", model_dir, "--json", images["jpeg"], images["gray"]]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["errors"] == [] and [p["image"] for p in document["predictions"]] == [
        images["jpeg"],
        images["gray"],
    ]
    top = document["predictions"][0]["top"]
    assert [entry["rank"] for entry in top] == [1, 2, 3, 4, 5]
    probabilities = [entry["probability"] for entry in top]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1.0)
    assert all(entry["class"] == names[entry["index"]] for entry in top)
    # The 64x64 image is centre-cropped to 56x56, exactly as in evaluation.
    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
    pixels = np.asarray(Image.open(images["jpeg"]).convert("RGB"), np.float32)[None, 4:60, 4:60]
    expected = np.asarray(model(pixels))[0]
    assert top[0]["index"] == int(expected.argmax())
    assert top[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_many_files_go_in_batches_with_one_progress_line_each(job, images, capsys, monkeypatch):
    model_dir, _ = job
    paths = [images["jpeg"], images["png"], images["broken"], images["gray"], images["jpeg"]]
    argv = ["--model", model_dir, "--json", *paths]
    assert predict.main(argv) == 1
    whole = capsys.readouterr()
    assert whole.err.splitlines() == [f"error: {images['broken']}: cannot read image ({_pil_error(images)})"]

    monkeypatch.setattr(predict, "BATCH_SIZE", 2)
    assert predict.main(argv) == 1
    batched = capsys.readouterr()
    # The same answers, read and predicted two files at a time (the probabilities to float32
    # rounding: oneDNN's convolution may sum in another order for another batch size)...
    whole_rows, batched_rows = json.loads(whole.out)["predictions"], json.loads(batched.out)["predictions"]
    assert [row["image"] for row in batched_rows] == [row["image"] for row in whole_rows]
    for row, expected in zip(batched_rows, whole_rows, strict=True):
        assert [e["index"] for e in row["top"]] == [e["index"] for e in expected["top"]]
        for entry, reference in zip(row["top"], expected["top"], strict=True):
            assert entry == {**reference, "probability": pytest.approx(reference["probability"], abs=1e-6)}
    # ...with one progress line after each batch, the broken file's line within its (the second) batch.
    lines = batched.err.splitlines()
    assert lines[1] == whole.err.strip()
    del lines[1]
    counts = [re.fullmatch(r"\d\d:\d\d:\d\d predict: (\d/5) images, [\d.]+ s", line) for line in lines]
    assert all(counts) and [m.group(1) for m in counts] == ["2/5", "4/5", "5/5"], lines


def _pil_error(images):
    try:
        predict.decode_image(open(images["broken"], "rb").read())
    except OSError as error:
        return error
    raise AssertionError("the broken file decoded")


# A panel without a true class has one title line (the prediction) above its tiles.
PANEL_SHAPE = (
    render.GAP + render.FONT_SIZE + 3 + render.TILE + render.GAP,
    3 * render.TILE + 4 * render.GAP,
    3,
)


def _decode(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def test_gradcam_panels_are_saved(job, images, tmp_path, capsys):
    model_dir, _ = job
    out = str(tmp_path / "cams")
    argv = ["--model", model_dir, "--json", "--gradcam", out, "--method", "gradcam++"]
    assert predict.main([*argv, images["jpeg"], images["png"]]) == 0
    document = json.loads(capsys.readouterr().out)
    saved = [p["gradcam"] for p in document["predictions"]]
    stem = os.path.splitext(os.path.basename(images["jpeg"]))[0]
    assert saved == [os.path.join(out, f"{stem}.png"), os.path.join(out, "wide.png")]
    for path in saved:
        with open(path, "rb") as f:
            assert _decode(f.read()).shape == PANEL_SHAPE


def test_gcs_images_and_gradcam_panels_in_a_bucket(job, images, tmp_path, gcs_bucket, capsys):
    model_dir, _ = job
    bucket = storage.gcs_client().bucket(gcs_bucket)
    uris = []
    for key in ("jpeg", "png"):
        name = f"shots/{os.path.basename(images[key])}"
        bucket.blob(name).upload_from_filename(images[key])
        uris.append(f"gs://{gcs_bucket}/{name}")
    panels = f"gs://{gcs_bucket}/panels"
    assert predict.main(["--model", model_dir, "--json", "--gradcam", panels, *uris]) == 0
    remote = json.loads(capsys.readouterr().out)
    local_dir = str(tmp_path / "local")
    assert (
        predict.main(["--model", model_dir, "--json", "--gradcam", local_dir, images["jpeg"], images["png"]])
        == 0
    )
    local = json.loads(capsys.readouterr().out)

    stem = os.path.splitext(os.path.basename(images["jpeg"]))[0]
    names = [f"panels/{stem}.png", "panels/wide.png"]
    assert [p["gradcam"] for p in remote["predictions"]] == [f"gs://{gcs_bucket}/{n}" for n in names]
    assert (
        sorted(blob.name for blob in storage.gcs_client().list_blobs(gcs_bucket, prefix="panels/")) == names
    )
    # The bucket's images give the same predictions and panels as the local files.
    for gcs_result, local_result in zip(remote["predictions"], local["predictions"], strict=True):
        assert gcs_result["top"] == local_result["top"]
        panel = _decode(bucket.blob(gcs_result["gradcam"].split("/", 3)[3]).download_as_bytes())
        assert panel.shape == PANEL_SHAPE
        with open(local_result["gradcam"], "rb") as f:
            np.testing.assert_array_equal(panel, _decode(f.read()))


def test_keras_file_classes_file_and_gcs_image(images, tmp_path, gcs_bucket, capsys):
    path = str(tmp_path / "bare.keras")
    _model(64).save(path)  # No config: same size as the images, so no crop.
    classes = tmp_path / "names.txt"
    classes.write_text("".join(f"thing {i}\n" for i in range(NUM_CLASSES)))
    storage.gcs_client().bucket(gcs_bucket).blob("shots/wide.png").upload_from_filename(images["png"])
    uri = f"gs://{gcs_bucket}/shots/wide.png"
    missing = f"gs://{gcs_bucket}/shots/none.png"
    assert predict.main(["--model", path, "--classes", str(classes), "--json", uri, missing]) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert [p["image"] for p in document["predictions"]] == [uri]
    assert document["predictions"][0]["top"][0]["class"].startswith("thing ")
    assert [e["image"] for e in document["errors"]] == [missing]
    assert f"error: {missing}:" in captured.err


def test_unusable_config_json_is_one_line_naming_it(tmp_path, capsys):
    root = tmp_path / "job"
    root.mkdir()
    _model(64).save(str(root / "model.keras"))
    for text in ("{not json", "[1, 2]"):
        (root / "config.json").write_text(text)
        assert predict.main(["--model", str(root), "x.jpg"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {root / 'config.json'}: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "{tmp}/nothing-here", "x.jpg"], "model not found"),
        (["--model", "{job}", "--gradcam", "{tmp}/g", "--method", "blur", "x.jpg"], "Unknown method 'blur'"),
        (["--model", "{job}", "--top-k", "0", "x.jpg"], "--top-k must be >= 1"),
        (["--model", "{job}"], "required: images"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(job, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, job=job[0]) for a in argv]
    try:
        code = predict.main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
