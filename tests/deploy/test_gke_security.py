"""The GKE manifests run the trainer under Kubernetes' "restricted" Pod Security Standard (issue 27).

The manifests are the deploy CLI's own (``submit gke --dry-run``), validated
strictly against the Kubernetes schemas by kubernetes-validate (a misspelt
security field fails there), then checked field by field against the
restricted profile's rules: non-root, no privilege escalation, every
capability dropped, the runtime's default seccomp profile, no host
namespaces or host paths; and a read-only root file system whose writable
scratch is the image's ``/tmp`` and the trainer user's home (the Dockerfile's).

That the trainer still works with a read-only root is run, not assumed:
tests/deploy/test_cloud_run.py.
"""

import os

import kubernetes_validate
import pytest
import yaml

from deploy import gke, submit

K8S_VERSION = "1.33"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = [
    *("--image", "us-docker.pkg.dev/my-project/train/tiny-inception:1.0", "--arch", "minception"),
    *("--data-dir", "gs://my-bucket/records", "--job-dir", "gs://my-bucket/jobs/secure", "--name", "secure"),
]


def _manifests(capsys, workers):
    flags = ["--workers", str(workers), "--gpus", "1", "--dry-run", "--", "--epochs", "1"]
    assert submit.main(["gke", *BASE, *flags]) == 0
    manifests = list(yaml.safe_load_all(capsys.readouterr().out))
    for manifest in manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    return manifests


def _dockerfile(keyword):
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    return [line.split(None, 1)[1] for line in lines if line.split(None, 1)[0].upper() == keyword]


@pytest.mark.parametrize("workers", [1, 3])
def test_every_pod_meets_the_restricted_pod_security_standard(capsys, workers):
    job = _manifests(capsys, workers)[-1]
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert not any(pod.get(field) for field in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"))
    containers = pod["containers"] + pod.get("initContainers", [])
    assert len(containers) == 1
    for container in containers:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        }
        # Nothing in the container loosens the pod's settings.
        assert "privileged" not in container["securityContext"]
        assert not any(port.get("hostPort") for port in container.get("ports", []))
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert mounts == {"tmp": "/tmp", "home": "/home/trainer"} == gke.SCRATCH_VOLUMES
    # Only emptyDir scratch: no hostPath (the restricted profile allows neither it nor others here).
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]


def test_a_misspelt_security_field_fails_schema_validation(capsys):
    job = _manifests(capsys, 1)[-1]
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {**container["securityContext"], "allowPrivilegeEscalaton": False}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    container["securityContext"] = {"readOnlyRootFilesystem": "yes"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_the_image_runs_as_a_numeric_non_root_user_whose_home_is_the_writable_scratch():
    # runAsNonRoot is enforced by the kubelet only for a numeric user: a name cannot be checked.
    user = _dockerfile("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    (useradd,) = [run for run in _dockerfile("RUN") if "useradd" in run]
    assert f"--uid {uid}" in useradd and "--create-home" in useradd and useradd.split()[-1] == "trainer"
    # The trainer starts in its home: a relative path, Keras' and CUDA's caches land on the scratch volume.
    assert _dockerfile("WORKDIR")[-1] == gke.SCRATCH_VOLUMES["home"] == "/home/trainer"
