"""The job-dir lease (contracts/lease.py) on a local folder and on gs:// through the GCS emulator.

Leases of "other runs" are written as such a run writes them (the lease's own JSON, with a
host, pid and heartbeat chosen by the test), then a second run's :class:`lease.Lease` meets them.
"""

import fcntl
import json
import os
import socket
import threading
import time

import pytest

from contracts import lease, storage


def _holder(host=None, pid=None, heartbeat_age=0.0, token="0" * 32):
    """The bytes of a lease another run wrote: its ``heartbeat_age`` seconds old."""
    now = time.time()
    holder = {
        "host": socket.gethostname() if host is None else host,
        "pid": os.getppid() if pid is None else pid,  # The test's parent: alive, and not this process.
        "token": token,
        "since": now - heartbeat_age - 5,
        "heartbeat": now - heartbeat_age,
    }
    return json.dumps(holder).encode("utf-8"), holder


def _dead_pid():
    """A pid no process has: pids are below the kernel's pid_max."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


def _read(uri):
    return json.loads(storage.read_bytes(uri))


def _wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_two_leases_on_one_folder_the_second_is_refused_naming_the_holder(tmp_path):
    job = str(tmp_path / "job")  # Not there yet: the first run creates it.
    said = []
    first = lease.Lease(job, warn=said.append).take()
    written = _read(lease.lease_uri(job))
    assert (written["host"], written["pid"]) == (socket.gethostname(), os.getpid())
    assert written["token"] == first.holder["token"]
    with pytest.raises(lease.LeaseHeldError) as refused:
        lease.Lease(job, warn=said.append).take()
    message = str(refused.value)
    holder = lease.describe(written).rsplit(", last heartbeat", 1)[0]  # host, pid, since
    assert holder.startswith(f"host {socket.gethostname()}, pid {os.getpid()}, since 20")
    assert message.startswith(f"job dir {job} is in use by another run ({holder}, last heartbeat ")
    assert "\n" not in message
    assert _read(lease.lease_uri(job)) == written  # The refused run changed nothing.
    first.release()
    assert not os.path.exists(lease.lease_uri(job))
    again = lease.Lease(job, warn=said.append).take()  # Released: the next run (a resume) takes it.
    again.release()
    assert said == []


def test_the_lease_is_given_back_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), lease.held(str(tmp_path), warn=print):
        assert os.path.exists(lease.lease_uri(str(tmp_path)))
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_a_worker_takes_no_lease(tmp_path):
    with lease.held(str(tmp_path), chief=False, warn=print) as taken:
        assert taken is None
        assert os.listdir(tmp_path) == []


def test_a_live_pid_on_this_host_is_refused(tmp_path):
    data, holder = _holder(heartbeat_age=lease.HEARTBEAT_TIMEOUT_S / 2)
    (tmp_path / lease.LEASE_FILE).write_bytes(data)
    with pytest.raises(lease.LeaseHeldError, match=f"pid {holder['pid']}, since .* last heartbeat 300 s ago"):
        lease.Lease(str(tmp_path), warn=print).take()
    assert (tmp_path / lease.LEASE_FILE).read_bytes() == data


def test_a_dead_pid_on_this_host_is_taken_over_with_one_warning(tmp_path):
    data, holder = _holder(pid=_dead_pid())
    (tmp_path / lease.LEASE_FILE).write_bytes(data)
    said = []
    taken = lease.Lease(str(tmp_path), warn=said.append).take()
    assert len(said) == 1 and said[0].startswith("took over the job dir's lease from a run that is gone")
    assert f"host {holder['host']}, pid {holder['pid']}, since " in said[0]
    assert _read(lease.lease_uri(str(tmp_path)))["token"] == taken.holder["token"]
    taken.release()
    assert not (tmp_path / lease.LEASE_FILE).exists()


def test_this_pid_in_a_lease_this_process_never_took_is_gone(tmp_path):
    # A restarted container runs the trainer under the pid its previous incarnation had.
    data, _ = _holder(pid=os.getpid())
    (tmp_path / lease.LEASE_FILE).write_bytes(data)
    said = []
    lease.Lease(str(tmp_path), warn=said.append).take().release()
    assert len(said) == 1 and f"pid {os.getpid()}" in said[0]


@pytest.mark.parametrize(
    ("age", "taken_over"), [(lease.HEARTBEAT_TIMEOUT_S - 30, False), (lease.HEARTBEAT_TIMEOUT_S + 30, True)]
)
def test_another_host_is_gone_after_the_heartbeat_timeout(tmp_path, age, taken_over):
    data, _ = _holder(host="other-host.internal", pid=os.getpid(), heartbeat_age=age)
    (tmp_path / lease.LEASE_FILE).write_bytes(data)
    said = []
    if not taken_over:
        with pytest.raises(lease.LeaseHeldError, match=r"host other-host\.internal, "):
            lease.Lease(str(tmp_path), warn=said.append).take()
        assert said == []
        return
    lease.Lease(str(tmp_path), warn=said.append).take().release()
    assert len(said) == 1 and f"last heartbeat {age:.0f} s ago" in said[0]


@pytest.mark.parametrize(
    ("theirs", "ours", "taken_over"), [("job-7", "job-7", True), ("job-7", "job-8", False), ("", "", False)]
)
def test_an_earlier_attempt_of_the_same_scheduler_job_is_gone_at_once(
    tmp_path, monkeypatch, theirs, ours, taken_over
):
    _, holder = _holder(host="vm-before-the-preemption", pid=os.getpid(), heartbeat_age=5.0)
    (tmp_path / lease.LEASE_FILE).write_bytes(json.dumps({**holder, "job": theirs}).encode("utf-8"))
    for name in lease.JOB_ID_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUD_ML_JOB_ID", ours)
    said = []
    if not taken_over:
        with pytest.raises(lease.LeaseHeldError, match="vm-before-the-preemption"):
            lease.Lease(str(tmp_path), warn=said.append).take()
        return
    taken = lease.Lease(str(tmp_path), warn=said.append).take()
    assert _read(str(tmp_path / lease.LEASE_FILE))["job"] == "job-7"
    taken.release()
    assert len(said) == 1 and "vm-before-the-preemption" in said[0]


def test_an_unreadable_lease_is_held_until_it_is_as_old_as_the_timeout(tmp_path):
    path = tmp_path / lease.LEASE_FILE
    path.write_bytes(b'{"host": "half-writ')  # A lease cut short (a crash while it was written).
    with pytest.raises(lease.LeaseHeldError, match="an unreadable lease written 0 s ago"):
        lease.Lease(str(tmp_path), warn=print).take()
    old = time.time() - lease.HEARTBEAT_TIMEOUT_S - 1
    os.utime(path, (old, old))
    said = []
    lease.Lease(str(tmp_path), warn=said.append).take().release()
    assert len(said) == 1 and "an unreadable lease written" in said[0]


def test_of_many_runs_meeting_one_dead_lease_exactly_one_takes_it(tmp_path):
    data, _ = _holder(pid=_dead_pid())
    (tmp_path / lease.LEASE_FILE).write_bytes(data)
    start, results, said = threading.Barrier(6), [], []

    def contender():
        start.wait()
        try:
            results.append(lease.Lease(str(tmp_path), warn=said.append).take())
        except lease.LeaseHeldError as error:
            results.append(error)

    threads = [threading.Thread(target=contender) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [r for r in results if isinstance(r, lease.Lease)]
    assert len(results) == 6 and len(winners) == 1 and len(said) == 1
    assert _read(lease.lease_uri(str(tmp_path)))["token"] == winners[0].holder["token"]
    winners[0].release()


def test_the_heartbeat_moves_and_a_lost_lease_is_said_and_left_alone(tmp_path):
    said = []
    taken = lease.Lease(str(tmp_path), warn=said.append, every_s=0.05).take()
    uri = lease.lease_uri(str(tmp_path))
    first = _read(uri)["heartbeat"]
    assert _wait_for(lambda: _read(uri)["heartbeat"] > first)
    # Another run takes the lease over (this one looked gone to it): the heartbeat notices.
    intruder, _ = _holder(host="other-host.internal")
    with open(uri, "r+b") as f:  # In place and locked, as a takeover writes.
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.truncate()
        f.write(intruder)
    assert _wait_for(lambda: said)
    assert said == [f"lost the job dir's lease {uri}: another run took it over"]
    taken.release()
    assert (tmp_path / lease.LEASE_FILE).read_bytes() == intruder  # Not this run's to delete.


def test_gcs_lease_refuses_a_second_run_takes_over_a_dead_one_and_is_released(gcs_bucket):
    job = f"gs://{gcs_bucket}/jobs/run"
    uri = lease.lease_uri(job)
    said = []
    first = lease.Lease(job, warn=said.append).take()
    assert _read(uri)["token"] == first.holder["token"]
    with pytest.raises(
        lease.LeaseHeldError, match=f"job dir {job} is in use by another run .*pid {os.getpid()}"
    ):
        lease.Lease(job, warn=said.append).take()
    first.release()
    assert not storage.exists(uri)
    data, _ = _holder(host="preempted-vm", heartbeat_age=lease.HEARTBEAT_TIMEOUT_S + 60)
    storage.write_bytes(uri, data)
    second = lease.Lease(job, warn=said.append).take()
    assert len(said) == 1 and "host preempted-vm, " in said[0]
    assert _read(uri)["token"] == second.holder["token"]
    second.release()
    assert not storage.exists(uri)


def test_gcs_lease_writes_carry_generation_preconditions(gcs_bucket, monkeypatch):
    """Create, heartbeat, takeover and release are conditional on the generation read.

    The emulator ignores ``ifGenerationMatch``, so the race it settles is covered by the local
    test of many runs; here the requests are checked to carry it.
    """
    client = storage.gcs_client()
    sent = []
    request = client._http.request

    def recording(method, url, *args, **kwargs):
        sent.append((method, url))
        return request(method, url, *args, **kwargs)

    monkeypatch.setattr(client._http, "request", recording)
    job = f"gs://{gcs_bucket}/job"
    taken = lease.Lease(job, warn=print, every_s=0.05).take()
    created = taken._version
    assert any(m == "POST" and "ifGenerationMatch=0" in url for m, url in sent)
    assert _wait_for(lambda: taken._version != created)
    taken.release()
    conditional = [
        (m, url) for m, url in sent if "ifGenerationMatch=" in url and "ifGenerationMatch=0" not in url
    ]
    assert {m for m, _ in conditional} == {"POST", "DELETE"}, sent
