"""Multi-node submission path: a real local Ray head (127.0.0.1 only) and the Ray Jobs API."""

from __future__ import annotations

import asyncio
import json
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

from grounding_ops.storage import open_store
from grounding_ops.testing import marked_records
from grounding_ops.training.run_record import RunRecord

from grounding_ops.training import ray_jobs

ray = pytest.importorskip("ray")

NODE_SECRET = "node-provided-secret"
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"


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
    # Credentials provided on the node (the environment `ray start` runs with), never with a job.
    env["AWS_SECRET_ACCESS_KEY"] = NODE_SECRET
    cmd = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--ray-client-server-port",
        str(client),
        "--node-manager-port",
        str(nm),
        "--object-manager-port",
        str(om),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--metrics-export-port",
        str(metrics),
        "--runtime-env-agent-port",
        str(rt_agent),
        "--min-worker-port",
        str(worker_lo),
        "--max-worker-port",
        str(worker_lo + 99),
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(100 * 1024 * 1024),
        "--temp-dir",
        temp_dir,
    ]
    log = open(Path(temp_dir) / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"ray start exited {proc.returncode}: {(Path(temp_dir) / 'ray-start.log').read_text()[-3000:]}"
                )
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


def test_credentials_never_go_into_a_runtime_env() -> None:
    env, withheld = ray_jobs.shareable_env(
        {
            "AWS_ACCESS_KEY_ID": "AKID",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_SESSION_TOKEN": "t",
            "WANDB_API_KEY": "w",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "PYTHONUNBUFFERED": "1",
        }
    )
    assert env == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "PYTHONUNBUFFERED": "1"}
    assert withheld == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY"]
    with pytest.raises(ray_jobs.RayJobError, match="WANDB_API_KEY look like credentials.*on the nodes"):
        ray_jobs.submit_training("http://127.0.0.1:9", ["grounding-ops"], env_vars={"WANDB_API_KEY": "w"})


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
        env_vars={"GROUNDING_OPS_WORK_DIR": "/srv/run"},
        poll_s=1.0,
        timeout_s=240,
        on_log=chunks.append,
    )
    logs = ray_jobs.job_logs(ray_head, job_id)
    assert ray_jobs.job_status(ray_head, job_id) == "SUCCEEDED"
    assert "actor_rollout_ref.rollout.n=8" in logs
    assert "trainer.nnodes=2" in logs
    assert "trainer.experiment_name=ray-job-test" in logs
    assert "data.train_files=/srv/run/data/train.parquet" in logs  # env vars reached the job
    assert "trainer.default_local_dir=/shared/grounding-ops/" in logs  # multi-node: the shared folder
    streamed = "\n".join(chunks)
    assert "actor_rollout_ref.rollout.n=8" in streamed and "GROUNDING_OPS_WORK_DIR" in streamed


_PROBE_DAG = """
import json, os
import pendulum
from airflow.sdk import DAG
from grounding_ops.pipeline.docker_tasks import TrainContainerOperator

with DAG("ray_deferral_probe", schedule=None, start_date=pendulum.datetime(2025, 1, 1, tz="UTC")):
    task = TrainContainerOperator(task_id="train", plan=json.loads(os.environ["PROBE_PLAN"]))
    task.ray_poll_s = 1.0
"""

_DEFERRED_RUN = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from grounding_ops.pipeline import ray_trigger

events = []
original_run = ray_trigger.RayJobTrigger.run


async def recorded_run(self):  # the real trigger, recording what it fires
    async for event in original_run(self):
        events.append(event.payload)
        yield event


ray_trigger.RayJobTrigger.run = recorded_run
bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags["ray_deferral_probe"].test()
ti = run.get_task_instance("train")
print("RESULT " + json.dumps({"state": str(ti.state), "events": events}))
"""


def _airflow_env(ray_head: str, tmp_path: Path) -> dict[str, str]:
    port = int(ray_head.rsplit(":", 1)[1])
    return {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "AIRFLOW_CONN_GROUNDING_RAY": json.dumps({"conn_type": "generic", "host": "127.0.0.1", "port": port}),
        "AIRFLOW_CONN_GROUNDING_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIDTASK",
                "password": "task-secret-key",
                "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
            }
        ),
        "AIRFLOW_VAR_GROUNDING_WANDB_API_KEY": "task-wandb-key",
    }


@pytest.mark.slow
def test_multi_node_train_task_defers_until_the_job_ends(
    ray_head: str, airflow_db, mlflow_service, tmp_path: Path
) -> None:
    """dag.test() runs the task, the trigger (as the triggerer would) and the resumed task in turn."""
    output = tmp_path / "train"
    output.mkdir()
    # What the trainer writes last; this job only prints its overrides, so the result is staged here.
    RunRecord(
        dataset_version="v1",
        dataset_uri="s3://b/datasets/demo/v1",
        spec={"model": "Qwen/Qwen2.5-VL-7B-Instruct"},
        engine="verl",
        steps_done=4,
        steps_trained=4,
        target_steps=4,
        final_uri=str(output / "final"),
    ).save(open_store(str(output)))
    command = ray_jobs.train_argv(
        preset="qwen2.5-vl-7b-2node",
        dataset_uri="s3://b/datasets/demo",
        output_uri="s3://b/runs/demo",
        extra_args=["--print-overrides"],
    )[1:]
    plan = {
        "engine": "gpu",
        "nodes": 2,
        "gpus": 8,
        "command": command,
        "output_uri": str(output),
        "dataset_version": "v1",
        "dataset_uri": "s3://b/datasets/demo/v1",
        "fingerprint": "ray-probe",
        "environment": {"GROUNDING_OPS_WORK_DIR": "/srv/run"},
    }
    bundle = tmp_path / "dags"
    bundle.mkdir()
    dag_file = bundle / "ray_deferral_probe.py"
    dag_file.write_text(_PROBE_DAG)
    # dag.test() runs DAGs of a configured bundle: the project's dags folder plus this probe's folder.
    bundles = [
        {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
        {"name": "ray-deferral-probe", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(bundle)}},
    ]
    env = {
        **_airflow_env(ray_head, tmp_path),
        "PROBE_PLAN": json.dumps(plan),
        # the resumed task records the training run in MLflow, as after any training container
        "AIRFLOW_CONN_GROUNDING_MLFLOW": json.dumps({"conn_type": "http", "host": mlflow_service.uri}),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
    }
    out = subprocess.run(
        [sys.executable, "-c", _DEFERRED_RUN, str(dag_file)], capture_output=True, text=True, timeout=400, env=env
    )
    lines = marked_records(out.stdout, "RESULT ")
    assert out.returncode == 0 and lines, (out.stdout[-3000:], out.stderr[-3000:])
    result = lines[-1]
    assert [e["status"] for e in result["events"]] == ["SUCCEEDED"], (result, out.stdout[-3000:], out.stderr[-3000:])
    assert result["state"] == "success", result
    job_id = result["events"][0]["job_id"]
    assert "data.train_files=/srv/run/data/train.parquet" in ray_jobs.job_logs(ray_head, job_id)
    # Nothing secret in what the Jobs API hands to any client.
    runtime_env = json.dumps(ray_jobs.job_runtime_env(ray_head, job_id))
    for secret in ("task-secret-key", "AKIDTASK", "task-wandb-key", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"):
        assert secret not in runtime_env, runtime_env


@pytest.mark.slow
def test_credentials_come_from_the_node_and_killing_the_deferred_task_stops_the_job(ray_head: str) -> None:
    from grounding_ops.pipeline.ray_trigger import CLASSPATH, RayJobTrigger

    probe = [
        sys.executable,
        "-c",
        "import os, time; "
        f"print('node credentials:', os.environ.get('AWS_SECRET_ACCESS_KEY') == {NODE_SECRET!r}, flush=True); "
        "time.sleep(600)",
    ]
    job_id = ray_jobs.submit_training(ray_head, probe)
    classpath, kwargs = RayJobTrigger(ray_head, job_id, poll_s=1.0).serialize()
    assert classpath == CLASSPATH
    trigger = RayJobTrigger(**kwargs)  # as the triggerer rebuilds it

    async def run_then_kill() -> None:
        waiting = asyncio.ensure_future(trigger.run().__anext__())
        deadline = time.monotonic() + 120
        while "node credentials: True" not in ray_jobs.job_logs(ray_head, job_id):
            assert time.monotonic() < deadline and not waiting.done(), ray_jobs.job_logs(ray_head, job_id)
            await asyncio.sleep(1)
        assert not waiting.done()  # still deferred while the job runs
        waiting.cancel()
        await trigger.on_kill()  # what the triggerer calls when the user kills the deferred task

    asyncio.run(run_then_kill())
    deadline = time.monotonic() + 60
    while ray_jobs.job_status(ray_head, job_id) != "STOPPED":
        assert time.monotonic() < deadline, "the killed task's job was not stopped"
        time.sleep(1)


@pytest.mark.slow
def test_failed_job_raises_and_running_job_is_stopped(ray_head: str) -> None:
    bad = ray_jobs.train_argv(
        preset="qwen2.5-vl-7b", dataset_uri="d", output_uri="o", sets=["rollout_n=1"], extra_args=["--print-overrides"]
    )
    with pytest.raises(ray_jobs.RayJobError, match="FAILED"):
        ray_jobs.run_training_job(ray_head, bad, poll_s=1.0, timeout_s=240, on_log=None)

    sleeper = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(600)"]
    with pytest.raises(TimeoutError, match="stopped"):
        ray_jobs.run_training_job(ray_head, sleeper, poll_s=1.0, timeout_s=15, on_log=None)
    jobs = [
        j for j in ray.job_submission.JobSubmissionClient(ray_head).list_jobs() if "time.sleep(600)" in j.entrypoint
    ]
    assert jobs
    deadline = time.monotonic() + 60
    while ray_jobs.job_status(ray_head, jobs[0].submission_id) != "STOPPED":
        assert time.monotonic() < deadline, "the timed-out job was not stopped"
        time.sleep(1)
