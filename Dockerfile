# Training image: the official TensorFlow GPU image plus this package.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/tiny-inception:TAG .
#
# The base image is a build argument. Its default is pinned by version only
# (a tag can move); for production pin it by digest as well:
# `docker buildx imagetools inspect tensorflow/tensorflow:2.21.0-gpu` prints
# the index digest, then build with
#   --build-arg BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu@sha256:<digest>
# (or write that digest into the default below).
# The base image already carries TensorFlow, CUDA and cuDNN, so pip keeps its
# TensorFlow and installs only what else setup.py asks for.
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The trainer runs as this unprivileged user. No keys are baked in: on Vertex
# AI and on GKE (Workload Identity) the job's service account supplies
# credentials through the metadata server.
# A high, fixed id: some base images already own uid 1000.
RUN useradd --no-log-init --create-home --shell /usr/sbin/nologin --uid 10001 --user-group trainer

WORKDIR /opt/tiny-inception
COPY setup.py pyproject.toml ./
COPY contracts/ contracts/
COPY deploy/ deploy/
COPY preprocessing/ preprocessing/
COPY trainer/ trainer/
COPY explain/ explain/
# The one install command, shared with the fresh-virtualenv test (tests/deploy/test_dockerfile.py).
RUN sh deploy/install.sh

USER 10001:10001
# Leave the source folder so `python -m` imports the installed package.
WORKDIR /home/trainer

ENTRYPOINT ["python", "-m", "trainer.task"]
