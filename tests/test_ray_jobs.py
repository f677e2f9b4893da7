"""Multi-node submission path: a real local Ray head (127.0.0.1 only) and the Ray Jobs API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from grounding_ops.training import ray_jobs

ray = pytest.importorskip("ray")


def test_train_argv_is_quoted_never_interpolated() -> None:
    argv = ray_jobs.train_argv(
        preset="qwen2.5-vl-7b-2node",
        dataset_uri="s3://b/d; rm -rf /",
        output_uri="s3://b/$(whoami)",
        sets=["experiment_name=a b"],
    )
    assert argv[:4] == ["grounding-ops", "train", "--preset", "qwen2.5-vl-7b-2node"]
    import shlex

    assert shlex.split(shlex.join(argv)) == argv  # the shell sees exactly these arguments


def test_resolve_address_forms() -> None:
    assert ray_jobs.resolve_address("10.1.2.3:8265") == "http://10.1.2.3:8265"
    assert ray_jobs.resolve_address("https://ray.example:443") == "https://ray.example:443"
    assert ray_jobs._url("head", None) == "http://head:8265"
    assert ray_jobs._url("https://head", 9000) == "https://head:9000"


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` bound to 127.0.0.1 on free ports; stopped by PID at the end."""
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("the ray CLI is not installed in this environment")
    if not Path(sys.executable).with_name("grounding-ops").exists():
        pytest.fail("grounding-ops is not installed in this venv: run `pip install -e .` first")
    gcs, dash, client, nm, om, agent, agent_grpc, metrics, rt_agent = _free_ports(9)
    worker_lo = 20000 + (os.getpid() % 200) * 100
    temp_dir = tempfile.mkdtemp(prefix="gray")  # short: Ray's unix socket paths have a length limit
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(ray_bin), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--ray-client-server-port", str(client), "--node-manager-port", str(nm), "--object-manager-port", str(om),
        "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_agent),
        "--min-worker-port", str(worker_lo), "--max-worker-port", str(worker_lo + 99),
        "--num-cpus", "1", "--object-store-memory", str(100 * 1024 * 1024), "--temp-dir", temp_dir,
    ]
    log = open(Path(temp_dir) / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}: {(Path(temp_dir) / 'ray-start.log').read_text()[-3000:]}")
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        yield address
    finally:
        # --block: SIGTERM makes `ray start` tear down the processes it started (its own session)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_training_entrypoint_runs_as_a_ray_job(ray_head: str) -> None:
    argv = ray_jobs.train_argv(
        preset="qwen2.5-vl-7b-2node",
        dataset_uri="s3://bucket/datasets/demo",
        output_uri="s3://bucket/runs/demo",
        sets=["rollout_n=8", "experiment_name=ray-job-test"],
        extra_args=["--print-overrides"],
    )
    chunks: list[str] = []
    job_id = ray_jobs.run_training_job(
        ray_head,
        argv,
        env_vars={"GROUNDING_TEST_SECRET": "s3cr3t-value", "GROUNDING_OPS_WORK_DIR": "/srv/run"},
        poll_s=1.0,
        timeout_s=240,
        on_log=chunks.append,
    )
    logs = ray_jobs.job_logs(ray_head, job_id)
    assert ray_jobs.job_status(ray_head, job_id) == "SUCCEEDED"
    assert "actor_rollout_ref.rollout.n=8" in logs
    assert "trainer.nnodes=2" in logs
    assert "trainer.experiment_name=ray-job-test" in logs
    assert "trainer.default_local_dir=/srv/run/checkpoints" in logs  # env vars reached the job
    streamed = "\n".join(chunks)
    assert "actor_rollout_ref.rollout.n=8" in streamed
    assert "s3cr3t-value" not in streamed and "GROUNDING_TEST_SECRET" in streamed  # names only


@pytest.mark.slow
def test_failed_job_raises_and_running_job_is_stopped(ray_head: str) -> None:
    bad = ray_jobs.train_argv(preset="qwen2.5-vl-7b", dataset_uri="d", output_uri="o", sets=["rollout_n=1"],
                              extra_args=["--print-overrides"])
    with pytest.raises(ray_jobs.RayJobError, match="FAILED"):
        ray_jobs.run_training_job(ray_head, bad, poll_s=1.0, timeout_s=240, on_log=None)

    sleeper = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(600)"]
    with pytest.raises(TimeoutError, match="stopped"):
        ray_jobs.run_training_job(ray_head, sleeper, poll_s=1.0, timeout_s=15, on_log=None)
    jobs = [j for j in ray.job_submission.JobSubmissionClient(ray_head).list_jobs() if "time.sleep(600)" in j.entrypoint]
    assert jobs
    deadline = time.monotonic() + 60
    while ray_jobs.job_status(ray_head, jobs[0].submission_id) != "STOPPED":
        assert time.monotonic() < deadline, "the timed-out job was not stopped"
        time.sleep(1)
