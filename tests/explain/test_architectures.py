"""Every explanation method on every registered full-size architecture (untrained).

That a multi-output model (Inception v1's training model) is explained exactly
like its main-output view is pinned, for every method, on a small model in
tests/explain/test_gradcam.py.
"""

import numpy as np
import pytest

from explain import gradcam, layers
from trainer import models
from trainer.models import inception_resnet_v2

NUM_CLASSES = 5


def _arch_params():
    # Inception-ResNet-v2: seconds per test on 2 cores even at its smallest side, for the long tier.
    names = models.list_models()
    return [pytest.param(n, marks=pytest.mark.long) if n == "inception_resnet_v2" else n for n in names]


# Inception-ResNet-v2's backbone at the smallest side whose feature layer (conv_7b_ac) is still
# spatial, 2x2: every layer and method runs as at the default 224, at a quarter of its compute.
OPTIONS = {"inception_resnet_v2": {"backbone_size": inception_resnet_v2.SPATIAL_BACKBONE_SIZE}}


@pytest.fixture(scope="module", params=_arch_params())
def arch(request):
    options = OPTIONS.get(request.param, {})
    model = models.build_model(request.param, NUM_CLASSES, seed=0, weights=None, **options)
    size = model.inputs[0].shape[1]
    images = np.random.default_rng(0).uniform(0, 255, size=(2, size, size, 3)).astype(np.float32)
    return request.param, model, images


@pytest.fixture(scope="module")
def compiled_maps(arch):
    """``method -> maps`` of the compiled explainers on ``arch``'s images, each computed once: tracing
    a method's graph is most of a test's seconds, and two tests read its Grad-CAM maps."""
    _, model, images = arch
    found = {}

    def maps(method):
        if method not in found:
            found[method] = gradcam.explain(model, images, [1, 3], method=method, max_maps=4)
        return found[method]

    return maps


def test_default_layer_is_the_architectures_feature_layer(arch):
    name, model, _ = arch
    assert layers.choose_layer(model) == models.get_defaults(name).feature_layer


@pytest.mark.parametrize("method", gradcam.METHODS)
def test_every_method_gives_finite_maps_of_input_size(arch, compiled_maps, method):
    _, _, images = arch
    maps = compiled_maps(method)
    assert maps.shape == images.shape[:3] and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_compiled_gradcam_equals_tf_keras_vis(arch, compiled_maps):
    # The training model itself: Inception v1's has auxiliary heads, scored as InactiveScore
    # by tf-keras-vis and ignored by the compiled path (max_maps is Score-CAM's alone).
    _, model, images = arch
    compiled = compiled_maps("gradcam")
    eager = gradcam.Explainer(model, "gradcam", compiled=False)(images, [1, 3])
    assert eager.max() > 0.99  # not two empty maps
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
