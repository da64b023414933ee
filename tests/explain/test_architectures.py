"""Every explanation method on every registered full-size architecture (untrained)."""

import numpy as np
import pytest

from explain import gradcam, layers
from trainer import models

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def built():
    """Models built so far in this module, by name: each architecture is built once."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = models.build_model(name, NUM_CLASSES, seed=0, weights=None)
        return cache[name]

    return get


@pytest.fixture(scope="module", params=models.list_models())
def arch(request, built):
    model = built(request.param)
    size = model.inputs[0].shape[1]
    images = np.random.default_rng(0).uniform(0, 255, size=(2, size, size, 3)).astype(np.float32)
    return request.param, model, images


def test_default_layer_is_the_architectures_feature_layer(arch):
    name, model, _ = arch
    assert layers.choose_layer(model) == models.get_defaults(name).feature_layer


@pytest.mark.slow
@pytest.mark.parametrize("method", gradcam.METHODS)
def test_every_method_gives_finite_maps_of_input_size(arch, method):
    _, model, images = arch
    maps = gradcam.explain(model, images, [1, 3], method=method, max_maps=4)
    assert maps.shape == images.shape[:3] and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.slow
def test_inception_v1_training_model_equals_its_main_output_model(built):
    model = built("inception_v1")
    assert len(model.outputs) == 3
    images = np.random.default_rng(1).uniform(0, 255, size=(1, 64, 64, 3)).astype(np.float32)
    for method in ("gradcam", "scorecam"):
        both = gradcam.explain(model, images, [2], method=method, max_maps=4)
        main = gradcam.explain(models.main_output_model(model), images, [2], method=method, max_maps=4)
        np.testing.assert_allclose(both, main, atol=1e-4)
