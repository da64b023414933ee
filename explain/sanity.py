"""Sanity check of an explanation method: cascading model-parameter randomisation.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018): if a
method explains *the model*, its maps must change when the model's learned
weights are destroyed. Starting at the output, the layers are re-initialised
one more at a time (cumulatively, top first) on a copy of the model, and after
each step the same images are explained for the same classes. The Spearman
rank correlation between each randomised map and the original one should
fall quickly; a method whose maps stay put (an edge detector, the image's own
brightness) fails the check whatever it looks like.

Which layers count: those of the main branch with a ``kernel`` (Conv2D,
Dense and their relatives), the layers that hold what the model learned.
Batch normalisation is left alone: its initial values (scale 1, shift 0,
mean 0, variance 1) are an identity, not a random function, and the
randomised convolution before it already erased what it had normalised.
A layer called at several places (shared weights) is one layer, randomised
once. Each weight gets its layer's own initializer, reseeded per step (a
seeded normal where the layer has none), so the randomised layer has the
scale of an untrained network.

Only the Spearman correlation of the maps is reported, not that of their
absolute values: every method of :mod:`explain.gradcam` returns maps already
clipped to ``[0, 1]``, where both are the same number.
"""

import keras
import numpy as np
from scipy import stats

from explain import gradcam, layers

# The fallback initializer of a weight whose layer names none.
_FALLBACK_STDDEV = 0.05


def _main_branch(model):
    """Returns the model of the main output only (auxiliary heads dropped)."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs, model.outputs[layers.main_output_index(model)])


def randomizable_layers(model):
    """Lists the main branch's layers with a kernel, output first (the randomisation order)."""
    names = []
    for layer in _main_branch(model).layers:
        if any(weight.name.endswith("kernel") for weight in layer.weights):
            names.append(layer.name)
    return names[::-1]


def _initializer(layer, weight_name, seed):
    # Keras names a weight's initializer after it: kernel -> kernel_initializer,
    # but depthwise_kernel -> depthwise_initializer.
    for attribute in (f"{weight_name}_initializer", f"{weight_name.removesuffix('_kernel')}_initializer"):
        found = getattr(layer, attribute, None)
        if found is not None:
            initializer = keras.initializers.get(found)
            config = initializer.get_config()
            if "seed" in config:
                config["seed"] = seed
                return initializer.__class__.from_config(config)
            return initializer
    return keras.initializers.RandomNormal(stddev=_FALLBACK_STDDEV, seed=seed)


def randomize_layer(layer, seed):
    """Re-initialises every weight of ``layer`` in place (see the module docstring)."""
    for index, weight in enumerate(layer.weights):
        initializer = _initializer(layer, weight.name, seed=seed * 1000 + index)
        weight.assign(initializer(tuple(weight.shape), dtype=weight.dtype))


def spearman(first, second):
    """Returns float ``[B]``: the Spearman rank correlation of each pair of maps.

    A pair where both maps are constant counts as identical (1); where only
    one is constant the maps share no ordering and score 0.
    """
    first = np.asarray(first, dtype=np.float64).reshape(len(first), -1)
    second = np.asarray(second, dtype=np.float64).reshape(len(second), -1)
    ranks_a = stats.rankdata(first, axis=1)
    ranks_b = stats.rankdata(second, axis=1)
    ranks_a -= ranks_a.mean(axis=1, keepdims=True)
    ranks_b -= ranks_b.mean(axis=1, keepdims=True)
    norm_a = np.sqrt((ranks_a**2).sum(axis=1))
    norm_b = np.sqrt((ranks_b**2).sum(axis=1))
    both = (norm_a > 0) & (norm_b > 0)
    safe = np.where(both, norm_a * norm_b, 1.0)
    correlation = np.where(both, (ranks_a * ranks_b).sum(axis=1) / safe, 0.0)
    return np.where((norm_a == 0) & (norm_b == 0), 1.0, np.clip(correlation, -1.0, 1.0))


def copy_model(model):
    """Returns an independent copy of ``model`` (same architecture, weights copied)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def cascading_randomization(
    model, images, classes, method=gradcam.DEFAULT_METHOD, layer=None, steps=None, seed=0, make_explainer=None
):
    """Runs the cascading model-parameter randomisation test on a copy of ``model``.

    Args:
        model: A functional Keras classifier (left unchanged).
        images: ``[B, H, W, C]`` raw pixels as the model takes them.
        classes: ``[B]`` class indices to explain.
        method: A method of :data:`explain.gradcam.METHODS` (only a label when
            ``make_explainer`` is given).
        layer: Target layer of the explainer; ``None`` picks the default.
        steps: Randomise at most this many layers (``None``: all of them).
        seed: Seed of the re-initialisation.
        make_explainer: Optional callable ``(model) -> explain`` where
            ``explain(images, classes)`` returns ``[B, H, W]`` maps; defaults
            to :class:`explain.gradcam.Explainer` with ``method`` and
            ``layer``. Lets a test or a new method run the same check.

    Returns:
        A dict with ``method``, ``layer`` (the explainer's target layer, or
        ``None`` for a custom explainer), ``layers`` (the ``S`` layer names
        in the order randomised), ``spearman`` (``S + 1`` mean correlations
        with the original maps; entry ``i`` is after randomising
        ``layers[:i]``, so entry 0 is 1), ``per_image`` (float ``[S + 1, B]``)
        and ``maps`` (float32 ``[S + 1, B, H, W]``). :func:`summary` keeps
        the JSON part.
    """
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if make_explainer is None:
        gradcam.check_method(method)

        def make_explainer(current):
            return gradcam.Explainer(current, method=method, layer=layer)

    images = np.asarray(images, dtype=np.float32)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    names = randomizable_layers(model)
    names = names if steps is None else names[:steps]
    copy = copy_model(model)
    explainer = make_explainer(copy)
    maps = [np.asarray(explainer(images, classes), dtype=np.float32)]
    for step, name in enumerate(names):
        randomize_layer(copy.get_layer(name), seed=seed * 10_000 + step)
        maps.append(np.asarray(make_explainer(copy)(images, classes), dtype=np.float32))
    maps = np.stack(maps)
    per_image = np.stack([spearman(maps[0], current) for current in maps])
    return {
        "method": method,
        "layer": getattr(explainer, "layer", None),
        "layers": names,
        "spearman": [float(v) for v in per_image.mean(axis=1)],
        "per_image": per_image,
        "maps": maps,
    }


def summary(result):
    """Returns the strict-JSON part of a :func:`cascading_randomization` result (no arrays)."""
    return {key: value for key, value in result.items() if key not in ("per_image", "maps")}
