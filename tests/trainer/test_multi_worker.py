"""A two-worker cluster of ``python -m trainer.task`` processes on 127.0.0.1 (``TF_CONFIG``).

One cluster serves every check: a SIGTERM on one worker stops both at the same step, the
restarted cluster resumes there and finishes, and the finished run shows the cluster's
contract (all-reduced updates, agreeing batch-norm statistics, outputs from the chief only).
Its own file, so that pytest-xdist's ``--dist loadfile`` runs it beside the other long files.
"""

import glob
import json
import os
import signal

import numpy as np

from tests import tiers
from tests.trainer import helpers
from trainer import state


@tiers.long("a two-worker cluster stopped and resumed")
def test_sigterm_stops_every_worker_at_the_same_step_and_the_cluster_resumes_and_agrees(
    sample_records, tmp_path, processes
):
    data_dir, _ = sample_records
    job, dump = str(tmp_path / "job"), str(tmp_path / "dump")
    backup = os.path.join(job, "backup")
    # Agreement every 3 steps in epochs of 10: a stop in epoch 1 lands mid-epoch (step 2, 5 or 8).
    # No --strategy: TF_CONFIG with two workers selects the multi-worker strategy by itself.
    args = helpers.quick_args(data_dir, job, 2, "--steps-per-epoch", "10", "--backup-every-steps", "2")
    args += ["--stop-check-every-steps", "3", "--explain", "false", "--debug-dump-weights", dump]
    args += helpers.FINAL_STAGES  # the precise pass sums over both workers (checked below)

    def start(run):
        procs = []
        cluster = {"worker": [f"127.0.0.1:{helpers.free_port()}" for _ in range(2)]}
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            log = str(tmp_path / f"{run}-w{index}.log")
            procs.append(helpers.start_cli(args, log, TF_CONFIG=tf_config))
        processes.extend(procs)
        return procs

    def logs(run):
        return "".join(helpers.tail(tmp_path / f"{run}-w{index}.log") for index in range(2))

    first = start("first")
    assert helpers.wait_for(helpers.mid_epoch_backup(backup), 400, first[0], interval=0.02), logs("first")
    first[1].send_signal(signal.SIGTERM)  # The non-chief worker only.
    codes = [proc.wait(timeout=300) for proc in first]
    assert codes == [143, 143], logs("first")
    saved = state.read_state(backup)
    assert saved["epoch"] == 1 and saved["step_in_epoch"] in (2, 5, 8), saved
    for index in range(2):  # Both workers stopped, and saved, at that step.
        text = (tmp_path / f"first-w{index}.log").read_text()
        assert f"backup saved at epoch 1 step {saved['step_in_epoch']}" in text, text[-3000:]

    # The cluster restarts both workers with the same command: they resume at that step.
    second = start("second")
    codes = [proc.wait(timeout=600) for proc in second]
    assert codes == [0, 0], logs("second")
    for index in range(2):
        text = (tmp_path / f"second-w{index}.log").read_text()
        assert f"resumed at epoch 1 step {saved['step_in_epoch']}" in text, text[-3000:]
    metrics = helpers.read_job_json(job, "metrics.json")
    assert metrics["epochs_completed"] == 2
    assert metrics["replicas"] == 2 and metrics["strategy"] == "multi_worker"

    chief = np.load(os.path.join(dump, "worker-worker-0.npz"))
    other = np.load(os.path.join(dump, "worker-worker-1.npz"))
    trainable = [k for k in chief.files if k.startswith("trainable/")]
    assert trainable and sorted(chief.files) == sorted(other.files)
    for key in trainable:  # gradients are all-reduced: every worker applies the same update
        np.testing.assert_allclose(chief[key], other[key], rtol=1e-5, atol=1e-6, err_msg=key)
    moving = [k for k in chief.files if k.startswith("moving/")]
    # Training updates batch-norm statistics from each worker's own shard; the precise
    # batch-norm pass before the final evaluation sums over both workers: they agree exactly.
    assert len(moving) == 2 * 33
    for key in moving:
        np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
    # Only the chief wrote outputs; the non-chief's temporary folders are gone.
    assert os.path.exists(os.path.join(job, "model.keras"))
    assert not glob.glob(os.path.join(job, "**", "workertemp-*"), recursive=True)
