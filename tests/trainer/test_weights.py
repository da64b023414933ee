"""ImageNet weights on a machine that cannot download them: one error line that names the ways out."""

import pytest

from trainer import models
from trainer.models import inception_resnet_v2

NUM_CLASSES = 5


# Offline ImageNet weights: what this machine's download attempt raised (no
# internet: a DNS failure, after ~0.05 s). Simulated so the tests are the same,
# and as fast, on a machine with network access.
def _offline(monkeypatch):
    import socket
    import urllib.error
    import urllib.request

    def refuse(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    # keras.utils.get_file downloads with urlretrieve, which calls urllib.request.urlopen.
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_inception_resnet_v2_imagenet_weights_unavailable_is_one_line_error(monkeypatch, tmp_path):
    home = tmp_path / "keras_home"  # empty: no cached copy of the weights
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    _offline(monkeypatch)
    with pytest.raises(models.WeightsUnavailableError) as caught:
        models.build_model("inception_resnet_v2", NUM_CLASSES, weights="imagenet")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "\n" not in message
    assert inception_resnet_v2.WEIGHTS_URL in message and "Name or service not known" in message
    assert "--weights PATH" in message and "gs://" in message and "deploy.submit stage" in message
    assert str(home / "models" / inception_resnet_v2.WEIGHTS_FILE) in message
    assert not list((home / "models").iterdir())  # no partial file left in the cache


def test_inception_resnet_v2_weights_file_matches_keras():
    # Our download must fetch, name and check the very file Keras caches for this backbone.
    import inspect

    from keras.src.applications import inception_resnet_v2 as keras_irv2

    assert keras_irv2.BASE_WEIGHT_URL + inception_resnet_v2.WEIGHTS_FILE == inception_resnet_v2.WEIGHTS_URL
    source = inspect.getsource(keras_irv2.InceptionResNetV2)
    assert inception_resnet_v2.WEIGHTS_MD5 in source
    assert inception_resnet_v2.WEIGHTS_FILE.removeprefix("inception_resnet_v2_weights_") in source


def test_cli_without_imagenet_weights_exits_2_with_one_error_line(sample_records, tmp_path):
    from tests.trainer import helpers

    home = tmp_path / "keras_home"
    home.mkdir()
    # A proxy on a closed local port refuses the download at once, with or without network.
    proxy = f"http://127.0.0.1:{helpers.free_port()}"
    env = {
        "KERAS_HOME": str(home),
        "https_proxy": proxy,
        "HTTPS_PROXY": proxy,
        "no_proxy": "",
        "NO_PROXY": "",
    }
    args = helpers.quick_args(sample_records[0], str(tmp_path / "job"), 1, "--arch", "inception_resnet_v2")
    proc = helpers.run_cli(args, timeout=300, **env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
    assert inception_resnet_v2.WEIGHTS_URL in errors[0] and "--weights" in errors[0]


def test_imagenet_weights_copy_in_keras_home_is_used_offline(monkeypatch, tmp_path):
    # Way out 2 of the error: a copy at the printed path is used without a download
    # (a stand-in file, its md5 pinned in place of the real one's).
    import hashlib

    cached = tmp_path / "keras_home" / "models" / inception_resnet_v2.WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stand-in weights")
    monkeypatch.setattr(inception_resnet_v2, "WEIGHTS_MD5", hashlib.md5(b"stand-in weights").hexdigest())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    _offline(monkeypatch)
    assert inception_resnet_v2.imagenet_weights_path() == str(cached)
