"""Transfer learning on Keras' Inception-ResNet-v2 (the book's section 7.3).

The book upsizes images to 224x224 on the host and wraps the pretrained
network as one layer of a ``Sequential`` model. Here the resize and the
network's own ``preprocess_input`` scaling (``x / 127.5 - 1``) are layers on
the device, and the backbone's layers hang directly off our input
(``input_tensor=``), so the model is ONE flat functional graph: Grad-CAM can
reach ``conv_7b_ac`` by name and the head/backbone split is a list of layers.

Two-phase fine-tuning: :func:`set_backbone_trainable` freezes everything but
the ``head_*``/``predictions`` layers for the warm-up epochs, then unfreezes.
"""

import contextlib
import os
import socket
import tempfile
import urllib.error

import keras

from contracts import model as model_contract
from contracts import storage
from trainer.models import blocks, registry

NAME = "inception_resnet_v2"

# Input side the ImageNet weights were trained around (the book uses 224): the
# default side the input is resized to. Any side from MIN_BACKBONE_SIZE (Keras'
# own lower bound for this network) works with the same weights; a smaller one
# costs roughly (side / 224)^2 of the compute (--backbone-size).
BACKBONE_SIZE = 224
MIN_BACKBONE_SIZE = 75
# The smallest side whose last feature map (conv_7b_ac) is still spatial: each
# valid 3x3 stride-2 step maps s to (s - 3) // 2 + 1, and 107 goes 53, 51, 25,
# 23, 11, 5, 2 where 106 ends at 1x1 (trainer.export.gradcam_layer falls back).
SPATIAL_BACKBONE_SIZE = 107

# Keras' ImageNet weights of the no-top network: the file name it caches under
# <Keras home>/models/, where it downloads it from, and its md5 (the values of
# keras.applications.InceptionResNetV2(include_top=False, weights="imagenet"),
# pinned against Keras' source by a test). Downloading it here rather than
# inside Keras lets a failure say which file is missing and how to provide it.
WEIGHTS_FILE = "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = (
    f"https://storage.googleapis.com/tensorflow/keras-applications/inception_resnet_v2/{WEIGHTS_FILE}"
)
WEIGHTS_MD5 = "d19885ff4a710c122648d3b5c3b684e4"

# Seconds one socket operation of the download may wait: urllib has no timeout
# by default, so a firewall that drops packets would otherwise stall the run.
DOWNLOAD_TIMEOUT_S = 60

# Our name for the backbone's global average pooling. Keras' pooling="avg"
# would add the same layer under a session-dependent automatic name.
BACKBONE_OUTPUT = "avg_pool"

DEFAULTS = registry.ArchDefaults(
    input_size=64,
    # The book fine-tunes with the same augmenting generator as Inception v1:
    # 55M parameters over 90k images overfit fast (train 96% vs valid 74% in
    # the book), so the pretrained network still needs augmented data.
    augmentation="book",
    learning_rate=1e-4,
    dropout=0.4,
    early_stopping_patience=5,
    weights="imagenet",
    feature_layer="conv_7b_ac",
    fine_tunable=True,
    backbone_size=BACKBONE_SIZE,
)


@registry.register_model(NAME, DEFAULTS)
def build(num_classes, *, input_size, dropout, weights, backbone_size):
    """Builds Inception-ResNet-v2 with a new softmax head as one flat graph.

    Args:
        num_classes: Number of classes.
        input_size: Side of the raw input, resized to ``backbone_size`` inside the model.
        dropout: Dropout before the new head.
        weights: ``"imagenet"`` (Keras' file, downloaded once into Keras'
            cache folder: :func:`imagenet_weights_path`), ``None`` or ``"none"``
            (random initialization), or the path of a weights file of the
            no-top backbone: a Keras ``.weights.h5`` (e.g. written by
            ``backbone_model(model).save_weights(path)``) or a legacy ``.h5``
            such as Keras' ``..._notop.h5``. ``gs://`` paths are copied first.
        backbone_size: Side the input is resized to before the backbone
            (:data:`BACKBONE_SIZE` by default; at least :data:`MIN_BACKBONE_SIZE`).

    Returns:
        A single-output model ending in the ``predictions`` layer.

    Raises:
        registry.WeightsUnavailableError: If the ImageNet weights cannot be downloaded.
        ValueError: If ``weights`` is neither of the above nor an existing file.
    """
    if (
        not isinstance(backbone_size, int)
        or isinstance(backbone_size, bool)
        or backbone_size < MIN_BACKBONE_SIZE
    ):
        raise ValueError(
            f"backbone_size for {NAME!r} must be an integer >= {MIN_BACKBONE_SIZE}, got {backbone_size!r}"
        )
    weights = _check_weights(weights)
    # Fetched before the 55M-parameter graph is built, so an offline machine fails fast.
    pretrained = imagenet_weights_path() if weights == "imagenet" else None
    inputs = blocks.image_input(input_size)
    x = keras.layers.Resizing(backbone_size, backbone_size, interpolation="bilinear", name="input_resize")(
        inputs
    )
    x = blocks.scale_to_unit_range(x)
    backbone = keras.applications.InceptionResNetV2(
        include_top=False,
        weights=pretrained,
        input_tensor=x,
        pooling=None,
    )
    if weights not in ("imagenet", None):
        _load_backbone_weights(backbone, weights)
    x = keras.layers.GlobalAveragePooling2D(name=BACKBONE_OUTPUT)(backbone.output)
    outputs = blocks.softmax_head(
        x, num_classes, dropout, prefix=blocks.HEAD_PREFIX, output_name=model_contract.MAIN_OUTPUT
    )
    return keras.Model(inputs, outputs, name=NAME)


def imagenet_weights_path():
    """Returns the local path of the ImageNet no-top weights, downloading them if needed.

    The file is Keras' own (:data:`WEIGHTS_FILE`, checked against its md5) in
    Keras' cache folder (:func:`weights_cache_dir`), so a copy Keras already
    downloaded, or one put there by hand on an offline machine, is used as is.

    Raises:
        registry.WeightsUnavailableError: With a one-line message naming the URL,
            the cache path and the ways to provide the weights without a download.
    """
    cache_dir = weights_cache_dir()
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return keras.utils.get_file(
                WEIGHTS_FILE, WEIGHTS_URL, cache_subdir="models", file_hash=WEIGHTS_MD5, cache_dir=cache_dir
            )
    # get_file turns URL errors into a bare Exception; a timeout mid-file is an
    # OSError and a corrupt download a ValueError: each means "no weights".
    except Exception as error:
        cached = os.path.join(cache_dir, "models", WEIGHTS_FILE)
        raise registry.WeightsUnavailableError(
            f"cannot download the ImageNet weights of {NAME} from {WEIGHTS_URL} ({_reason(error)}); "
            f"without internet access, pass --weights PATH with a local or gs:// copy of that file "
            f"(or a .weights.h5 of the no-top backbone), put the file at {cached} (Keras' cache: "
            f"$KERAS_HOME/models, default ~/.keras/models), or stage its folder with "
            f"'python -m deploy.submit stage --src LOCAL_DIR --dest gs://BUCKET/PREFIX' and pass "
            f"--weights gs://BUCKET/PREFIX/{WEIGHTS_FILE}; --weights none trains from random weights"
        ) from error


def weights_cache_dir():
    """Keras' cache folder, resolved as ``keras.utils.get_file`` does.

    ``$KERAS_HOME`` when set, else ``~/.keras``; a folder that cannot be written
    falls back to ``<tmp>/.keras``. Read at call time, so a test or a job can
    point it elsewhere after Keras was imported.
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return home


def is_head_layer(layer):
    """Whether ``layer`` belongs to the new classification head."""
    return layer.name == model_contract.MAIN_OUTPUT or layer.name.startswith(f"{blocks.HEAD_PREFIX}_")


def backbone_layers(model):
    """The layers of ``model`` that are not part of the classification head."""
    return [layer for layer in model.layers if not is_head_layer(layer)]


def set_backbone_trainable(model, trainable):
    """Freezes (``False``) or unfreezes (``True``) all layers but the head.

    A frozen BatchNormalization layer also runs in inference mode, keeping the
    pretrained statistics during the warm-up. Rebuild any compiled train step
    afterwards: the set of trainable variables changes.

    Args:
        model: A model whose head layers are named ``head_*``/``predictions``.
        trainable: Whether the backbone is trained.
    """
    for layer in backbone_layers(model):
        layer.trainable = trainable


def backbone_model(model):
    """The no-top backbone of ``model`` (input to ``avg_pool``), sharing weights.

    Its ``save_weights(path)`` writes a file that ``build_model(...,
    weights=path)`` loads.
    """
    return keras.Model(model.input, model.get_layer(BACKBONE_OUTPUT).output, name=f"{model.name}_backbone")


def _check_weights(weights):
    if isinstance(weights, str) and weights.lower() == "none":
        return None
    if weights in ("imagenet", None):
        return weights
    if not isinstance(weights, str | os.PathLike) or not storage.exists(os.fspath(weights)):
        raise ValueError(
            f"weights for {NAME!r} must be 'imagenet', None or an existing weights file, got {weights!r}"
        )
    return os.fspath(weights)


def _load_backbone_weights(backbone, path):
    # The backbone's topology is exactly the no-top network, so weights load in
    # order and any mismatch is an error rather than a silently random layer.
    with storage.local_file(path) as local:
        backbone.load_weights(local)


@contextlib.contextmanager
def _socket_timeout(seconds):
    # urlretrieve (inside get_file) takes no timeout; the default one is global,
    # so it is set only for the download and restored afterwards.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _reason(error):
    # get_file re-raises a URLError as a bare Exception: the URLError it replaced says why.
    cause = error.__context__ if isinstance(error.__context__, urllib.error.URLError) else error
    if isinstance(cause, urllib.error.HTTPError):
        text = f"HTTP {cause.code} {cause.reason}"
    elif isinstance(cause, urllib.error.URLError):
        text = str(cause.reason)
    else:
        text = str(cause) or type(cause).__name__
    return " ".join(text.split())  # one line, whatever the library wrote
