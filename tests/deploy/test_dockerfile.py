"""The training image's Dockerfile: pins, non-root user, and its install step run in a fresh virtualenv.

``make lint`` runs hadolint on it.

Docker cannot build here, so the image's one install command (``RUN sh
deploy/install.sh``) is run as is against a fresh virtualenv, with the files
the Dockerfile copies, and ``--no-deps`` to stay fast and offline.
"""

import json
import os
import shutil
import subprocess
import venv

from tests import tiers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTALL_COMMAND = "sh deploy/install.sh"


def _instructions():
    """Returns ``[(INSTRUCTION, arguments)]`` of the Dockerfile, continuation lines joined."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    logical, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        logical.append((keyword.upper(), " ".join(args.split())))
    return logical


def _values(keyword):
    return [args for kw, args in _instructions() if kw == keyword]


def test_base_image_user_and_entrypoint():
    (base,) = _values("FROM")
    # The base is a build argument (pinned by digest at build time); its default is the version pin.
    assert base == "${BASE_IMAGE}"
    assert _values("ARG") == ["BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu"]
    users = _values("USER")
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert json.loads(_values("ENTRYPOINT")[-1]) == ["python", "-m", "trainer.task"]


def test_single_install_command_is_the_documented_one():
    runs = _values("RUN")
    installs = [run for run in runs if "pip" in run or "install" in run]
    assert installs == [INSTALL_COMMAND]
    with open(os.path.join(ROOT, "deploy", "install.sh")) as f:
        script = f.read()
    assert "pip install --no-cache-dir" in script and "-e " not in script  # not editable
    with open(os.path.join(ROOT, "docs", "deploy.md")) as f:
        assert INSTALL_COMMAND in f.read()


def test_no_credentials_in_image_or_context():
    for keyword in ("ENV", "ARG"):
        for args in _values(keyword):
            upper = args.upper()
            for word in ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIALS"):
                assert word not in upper, f"{keyword} {args}"
    for args in _values("COPY") + _values("ADD"):
        assert ".json" not in args and "credentials" not in args.lower()
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "demo-run", "data", "*.json", "**/*.json"} <= ignored


def test_image_copies_every_package():
    packages = {
        name
        for name in os.listdir(ROOT)
        if os.path.isfile(os.path.join(ROOT, name, "__init__.py")) and name not in {"tests", "benchmarks"}
    }
    copied = {args.split()[0].rstrip("/") for args in _values("COPY")}
    assert packages <= copied
    assert {"setup.py", "pyproject.toml"} <= {part for args in _values("COPY") for part in args.split()}


def _copied_sources(dest):
    """Copies what the Dockerfile's COPY instructions copy into ``dest`` (Docker's rules)."""
    for args in _values("COPY"):
        *sources, target = args.split()
        to = os.path.join(dest, target)
        for source in sources:
            path = os.path.join(ROOT, source)
            if os.path.isdir(path):  # a folder's contents go into the target
                shutil.copytree(path, to, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                os.makedirs(to if target.endswith("/") else os.path.dirname(to), exist_ok=True)
                shutil.copy(path, to)


@tiers.long("pip installs the package into a fresh virtualenv")
def test_install_command_in_fresh_virtualenv(tmp_path):
    src, env_dir = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    _copied_sources(str(src))
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    env = {**os.environ, "PYTHON": python, "PIP_EXTRA_ARGS": "--no-deps"}
    env.pop("PYTHONPATH", None)
    command = INSTALL_COMMAND.split()
    result = subprocess.run(
        command, cwd=src, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    # From another folder the interpreter must find the installed copy, not the sources.
    probe = "import contracts, deploy, explain, preprocessing, trainer; print(contracts.__file__)"
    found = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip().startswith(str(env_dir))
    # Without TensorFlow or cloud clients the CLI still validates flags
    # (the fallback architecture list answers).
    argv = ["gke", "--image", "i:1", "--arch", "vgg", "--data-dir", "gs://bkt/d", "--job-dir", "gs://bkt/j"]
    command = [python, "-m", "deploy.submit", *argv, "--dry-run"]
    bad = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "error: unknown --arch 'vgg'; choose one of: inception_resnet_v2, inception_v1, minception"
    ]
