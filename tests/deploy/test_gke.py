"""GKE manifests from the deploy CLI (validated against the Kubernetes schemas) and the TF_CONFIG builder."""

import json
import os
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from deploy import submit, tf_config

K8S_VERSION = "1.33"
BASE = [
    "--image",
    "us-docker.pkg.dev/my-project/train/tiny-inception:1.0",
    "--arch",
    "inception_v1",
    "--data-dir",
    "gs://my-bucket/records",
    "--job-dir",
    "gs://my-bucket/jobs/run2",
    "--name",
    "run2",
    "--namespace",
    "training",
]


def _manifests(capsys, *flags):
    assert submit.main(["gke", *BASE, *flags, "--dry-run", "--", "--epochs", "2"]) == 0
    manifests = list(yaml.safe_load_all(capsys.readouterr().out))
    for manifest in manifests:
        # Raises ValidationError on any schema violation (strict: no unknown fields).
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    return manifests


@pytest.mark.parametrize(("workers", "gpus"), [(1, 1), (1, 4), (2, 4)])
def test_manifests_validate_and_match_layout(capsys, workers, gpus):
    flags = ["--workers", str(workers), "--gpus", str(gpus), "--gpu-type", "nvidia-l4"]
    flags += ["--machine-type", "g2-standard-48", "--service-account", "trainer-ksa", "--timeout", "2h"]
    manifests = _manifests(capsys, *flags)
    kinds = [m["kind"] for m in manifests]
    assert kinds == (["Job"] if workers == 1 else ["Service", "Job"])
    job = manifests[-1]
    assert job["apiVersion"] == "batch/v1"
    assert job["metadata"]["namespace"] == "training"
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "node.kubernetes.io/instance-type": "g2-standard-48",
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["serviceAccountName"] == "trainer-ksa"
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    (container,) = pod["containers"]
    assert container["image"] == "us-docker.pkg.dev/my-project/train/tiny-inception:1.0"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": gpus}
    strategy = "mirrored" if workers == 1 else "multi_worker"
    assert container["args"] == [
        "--arch",
        "inception_v1",
        "--data-dir",
        "gs://my-bucket/records",
        "--job-dir",
        "gs://my-bucket/jobs/run2",
        "--strategy",
        strategy,
        "--epochs",
        "2",
    ]
    if workers == 1:
        assert "completionMode" not in job["spec"] and "command" not in container
        return
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == workers
    service = manifests[0]
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert container["command"][:3] == ["python", "-m", "deploy.tf_config"]
    assert container["command"][-4:] == ["--", "python", "-m", "trainer.task"]


def test_cpu_job_and_restart_policy(capsys):
    (job,) = _manifests(capsys, "--gpus", "0", "--restart-job-on-worker-restart")
    pod = job["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "resources" not in pod["containers"][0]
    assert pod["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] > 0
    # The Job's name is the trainer's scheduler job id: a restarted pod takes over its lease.
    assert {"name": "TRAINER_JOB_ID", "value": job["metadata"]["name"]} in pod["containers"][0]["env"]


def test_schema_validation_catches_a_broken_manifest(capsys):
    (job,) = _manifests(capsys)
    typo = {**job, "spec": {**job["spec"], "parralelism": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    wrong_type = {**job, "spec": {**job["spec"], "completions": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--service-account", "sa@p.iam.gserviceaccount.com"], "Kubernetes service account name"),
        (["--namespace", "Bad_NS"], "bad --namespace 'Bad_NS'"),
        (["--name", "Run_2"], "--name 'Run_2' must be lowercase"),
        (["--workers", "-1"], "--workers must be at least 1"),
    ],
)
def test_bad_gke_flags(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["gke", *BASE, *flags, "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0]


def test_build_tf_config():
    names = {"job_name": "run2", "service": "run2", "namespace": "ns", "workers": 3, "port": 2222}
    assert tf_config.build_tf_config(2, **names) == {
        "cluster": {"worker": [f"run2-{i}.run2.ns.svc:2222" for i in range(3)]},
        "task": {"type": "worker", "index": 2},
    }
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        tf_config.build_tf_config(3, **names)


def _run_wrapper(command, index):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["POD_NAMESPACE"] = "training"
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_manifest_command_exports_tf_config_matching_pod_dns(capsys):
    """Runs the Indexed Job's container command with a probe in place of the trainer."""
    service, job = _manifests(capsys, "--workers", "3", "--gpus", "2", "--port", "3333")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    wrapper = [sys.executable if part == "python" else part for part in command[: command.index("--") + 1]]
    probe = [sys.executable, "-c", "import os; print(os.environ['TF_CONFIG'])"]
    result = _run_wrapper([*wrapper, *probe], index=1)
    assert result.returncode == 0, result.stderr
    # An Indexed Job pod's hostname is <job>-<index>; with subdomain=<service>
    # it resolves as <hostname>.<service>.<namespace>.svc.
    name, subdomain = job["metadata"]["name"], service["metadata"]["name"]
    expected = [f"{name}-{i}.{subdomain}.training.svc:3333" for i in range(3)]
    task = {"type": "worker", "index": 1}
    assert json.loads(result.stdout) == {"cluster": {"worker": expected}, "task": task}


def test_wrapper_without_completion_index_fails_cleanly():
    command = [sys.executable, "-m", "deploy.tf_config", "--job-name", "j", "--service", "j"]
    command += ["--workers", "2"]
    result = _run_wrapper([*command, "--", sys.executable, "-c", "pass"], index=None)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "JOB_COMPLETION_INDEX" in result.stderr
    result = _run_wrapper([*command, "--", sys.executable, "-c", "pass"], index=5)
    assert result.returncode == 2 and "outside 0..1" in result.stderr
