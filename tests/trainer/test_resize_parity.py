"""Train = serve for non-square photos: every serving path resizes with :func:`contracts.resize.resize`.

For each resize policy a dataset may record (``metadata.json``'s ``resize``), a
job dir and its export (:func:`trainer.export.export_saved_model`, the
trainer's writer) are built from one untrained tiny CNN: the comparison needs
no training nor a full-size architecture (tests/trainer/test_serving_explain.py
checks that ``export_model`` bakes in the dataset's policy). ``trainer.predict``
on the job dir, the export's ``serving_default`` and its ``explain`` must give
the probabilities of the model applied directly to ``contracts.resize.resize``'s
output (then the evaluation crop), for a 320x240 and a 90x200 PNG (lossless, so
PIL and TensorFlow decode the same pixels), and predict and the export must
feed the model the very same pixels. A path that ignored the recorded policy or
resized another way (the export's former plain ``tf.image.resize``, predict's
former PIL bilinear) fails the pixel check, and the policies' probabilities lie
a hundred tolerances apart or more.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from contracts import jobdir, resize, schema
from tests.explain import tiny_cnn
from trainer import export, predict

CROP = 56
# The paths agree to the last bit on this machine; the tolerance leaves room for float32 sums in
# another order elsewhere, and the gaps between policies are checked to be GAP or more.
TOLERANCE = 1e-6
GAP = 100 * TOLERANCE
# (width, height): landscape and a narrow portrait, neither a multiple of the other's sides.
SHAPES = ((320, 240), (90, 200))


@pytest.fixture(scope="module")
def model_file(sample_records, tmp_path_factory):
    """An untrained tiny CNN of the sample's classes, saved once as ``model.keras``."""
    _, metadata = sample_records
    keras.utils.set_random_seed(5)
    model = tiny_cnn(CROP, len(metadata["classes"]))
    path = str(tmp_path_factory.mktemp("parity-model") / jobdir.MODEL_FILE)
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def photos(sample_raw, tmp_path_factory):
    """Two non-square PNGs of different sample photos (the sample generator's own pictures, enlarged)."""
    raw_dir, raw = sample_raw
    root = tmp_path_factory.mktemp("parity-photos")
    paths = []
    for index, size in enumerate(SHAPES):
        wnid = raw["wnids"][index]
        source = os.path.join(raw_dir, "train", wnid, "images", f"{wnid}_0.JPEG")
        paths.append(str(root / f"photo_{size[0]}x{size[1]}.png"))
        Image.open(source).convert("RGB").resize(size, Image.BICUBIC).save(paths[-1])
    return paths


def _pixels(path):
    """The PNG's exact pixels (PIL and tf.io.decode_image agree on a PNG)."""
    return np.asarray(Image.open(path).convert("RGB"))


def _with_policy(metadata, policy):
    return {**metadata, "resize": {"policy": policy, "size": metadata["image_size"][0]}}


@pytest.fixture(scope="module", params=resize.POLICIES)
def job(request, model_file, sample_records, tmp_path_factory):
    """A job dir (config.json naming a data dir whose metadata.json records the policy) and its export."""
    policy = request.param
    _, metadata = sample_records
    _, model_path = model_file
    root = tmp_path_factory.mktemp(f"parity-{policy}")
    # The dataset as the preprocessing job records a run with --resize POLICY: metadata.json is
    # all that prediction reads of it.
    data = root / "data"
    data.mkdir()
    (data / schema.METADATA_FILE).write_text(json.dumps(_with_policy(metadata, policy)))
    job_dir = root / "job"
    job_dir.mkdir()
    shutil.copy(model_path, job_dir / jobdir.MODEL_FILE)
    config = {"arch": "tiny", "policy": "crop", "crop_size": CROP, "data_dir": str(data)}
    (job_dir / jobdir.CONFIG_FILE).write_text(json.dumps(config))
    export.export_saved_model(
        model_file[0],
        str(job_dir / "export"),
        layer="features",
        wnids=[c["wnid"] for c in metadata["classes"]],
        class_names=[c["name"] for c in metadata["classes"]],
        image_size=metadata["image_size"][0],
        policy="crop",
        crop_size=CROP,
        resize_policy=policy,
    )
    return policy, str(job_dir), metadata["image_size"][0]


def _expected(model, paths, policy, size):
    """The model on contracts.resize.resize's output and the evaluation centre crop, computed here."""
    offset = (size - CROP) // 2
    batch = np.stack([resize.resize(_pixels(p), size, policy).numpy() for p in paths]).astype(np.float32)
    return np.asarray(model(batch[:, offset : offset + CROP, offset : offset + CROP], training=False))


def _full(indices, probabilities, num_classes):
    """Top-k rows (every class) back in label order."""
    rows = np.zeros((len(indices), num_classes), np.float32)
    for row, (index, probability) in enumerate(zip(indices, probabilities, strict=True)):
        rows[row, np.asarray(index)] = probability
    return rows


def test_every_path_resizes_by_the_recorded_policy(job, model_file, photos, capsys):
    policy, job_dir, size = job
    model, _ = model_file
    num_classes = int(model.outputs[0].shape[-1])
    expected = _expected(model, photos, policy, size)

    assert predict.main(["--model", job_dir, "--json", "--top-k", str(num_classes), *photos]) == 0
    document = json.loads(capsys.readouterr().out)
    rows = [row["top"] for row in document["predictions"]]
    from_predict = _full(
        [[e["index"] for e in top] for top in rows],
        [[e["probability"] for e in top] for top in rows],
        num_classes,
    )

    loaded = export.LoadedExport(os.path.join(job_dir, "export"))
    data = [open(p, "rb").read() for p in photos]
    served = loaded(export.SIGNATURE, data)
    explained = loaded(export.EXPLAIN_SIGNATURE, data)
    for name, probabilities in {
        "predict": from_predict,
        "serving_default": _full(served["classes"], served["probabilities"], num_classes),
        "explain": _full(explained["classes"], explained["probabilities"], num_classes),
    }.items():
        np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE, err_msg=f"{policy}: {name}")

    # The pixels themselves agree exactly: the export's model input and predict's.
    pixels = loaded(export.PREPROCESS_SIGNATURE, data)["pixels"]
    prepared = jobdir.load(job_dir).prepare([_pixels(p) for p in photos])
    offset = (size - CROP) // 2
    direct = [resize.resize(_pixels(p), size, policy).numpy()[offset:-offset, offset:-offset] for p in photos]
    np.testing.assert_array_equal(pixels, np.stack(direct).astype(np.float32))
    np.testing.assert_array_equal(prepared, pixels)

    # The export says what it does: the resize as metadata.json records it.
    with open(os.path.join(job_dir, "export", export.SETTINGS_FILE)) as f:
        settings = json.load(f)
    assert settings == {
        "resize": {"policy": policy, "size": size},
        "evaluation": {"policy": "crop", "crop_size": CROP},
    }


def test_the_policies_feed_the_model_different_images(model_file, photos, sample_records):
    # What makes the parity test above discriminating: another policy's probabilities lie far
    # outside its tolerance, for each photo.
    model, _ = model_file
    size = sample_records[1]["image_size"][0]
    outputs = {policy: _expected(model, photos, policy, size) for policy in resize.POLICIES}
    for first, second in (("crop", "pad"), ("crop", "stretch"), ("pad", "stretch")):
        gaps = np.abs(outputs[first] - outputs[second]).max(axis=1)
        assert np.all(gaps > GAP), (first, second, gaps)


def test_a_dataset_without_a_recorded_policy_is_served_as_crop(model_file, sample_records, tmp_path):
    # Datasets written before the policy was recorded were all S x S, which every policy leaves as is.
    _, metadata = sample_records
    older = {key: value for key, value in metadata.items() if key != "resize"}
    (tmp_path / schema.METADATA_FILE).write_text(json.dumps(older))
    predictor = jobdir.load(model_file[1], data_dir=str(tmp_path))
    assert predictor.resize_policy == resize.DEFAULT_POLICY == "crop"
    assert jobdir.load(model_file[1]).resize_policy == "crop"  # No metadata.json at all.


def test_a_photo_of_the_dataset_size_is_left_as_it_is_by_every_policy(job, sample_raw, tmp_path):
    # A tiny-imagenet photo is already 64x64: whatever the policy, both paths only crop it.
    _, job_dir, size = job
    raw_dir, raw = sample_raw
    wnid = raw["wnids"][0]
    image = np.asarray(
        Image.open(os.path.join(raw_dir, "train", wnid, "images", f"{wnid}_0.JPEG")).convert("RGB")
    )
    assert image.shape == (size, size, 3)
    png = tmp_path / "square.png"
    Image.fromarray(image).save(png)
    offset = (size - CROP) // 2
    expected = image[None, offset:-offset, offset:-offset].astype(np.float32)
    np.testing.assert_array_equal(jobdir.load(job_dir).prepare([image]), expected)
    loaded = export.LoadedExport(os.path.join(job_dir, "export"))
    np.testing.assert_array_equal(loaded(export.PREPROCESS_SIGNATURE, [png.read_bytes()])["pixels"], expected)
