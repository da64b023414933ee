"""Every explanation method on every registered full-size architecture (untrained).

That a multi-output model (Inception v1's training model) is explained exactly
like its main-output view is pinned, for every method, on a small model in
tests/explain/test_gradcam.py.
"""

import numpy as np
import pytest

from explain import gradcam, layers
from trainer import models

NUM_CLASSES = 5


def _arch_params():
    # Inception-ResNet-v2 at 299 px: tens of seconds per test on 2 cores, for the long tier.
    names = models.list_models()
    return [pytest.param(n, marks=pytest.mark.long) if n == "inception_resnet_v2" else n for n in names]


@pytest.fixture(scope="module", params=_arch_params())
def arch(request):
    model = models.build_model(request.param, NUM_CLASSES, seed=0, weights=None)
    size = model.inputs[0].shape[1]
    images = np.random.default_rng(0).uniform(0, 255, size=(2, size, size, 3)).astype(np.float32)
    return request.param, model, images


def test_default_layer_is_the_architectures_feature_layer(arch):
    name, model, _ = arch
    assert layers.choose_layer(model) == models.get_defaults(name).feature_layer


@pytest.mark.parametrize("method", gradcam.METHODS)
def test_every_method_gives_finite_maps_of_input_size(arch, method):
    _, model, images = arch
    maps = gradcam.explain(model, images, [1, 3], method=method, max_maps=4)
    assert maps.shape == images.shape[:3] and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_compiled_gradcam_equals_tf_keras_vis(arch):
    # The training model itself: Inception v1's has auxiliary heads, scored as InactiveScore
    # by tf-keras-vis and ignored by the compiled path.
    _, model, images = arch
    compiled = gradcam.Explainer(model, "gradcam")(images, [1, 3])
    eager = gradcam.Explainer(model, "gradcam", compiled=False)(images, [1, 3])
    assert eager.max() > 0.99  # not two empty maps
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
