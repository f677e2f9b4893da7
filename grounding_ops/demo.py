"""``grounding-ops demo``: the whole loop on the embedded defaults, through the running scheduler.

Starts the local services (S3, MLflow, Airflow, Docker), builds the CPU trainer image, writes a
small synthetic grounding dataset with real images, triggers ``grounding_data`` through
Airflow's REST API, waits for the asset-triggered ``grounding_train`` run (CPU engine), and
prints where everything is: the UI and its login, the dataset version, the promotion decision
with its numbers, the champion and its metrics, and the lineage events.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from grounding_ops.settings import ServiceSettings

TERMINAL_STATES = {"success", "failed"}


@dataclass
class AirflowRestClient:
    """The few calls of Airflow's REST API (``/api/v2``) the demo needs, as the admin user."""

    settings: ServiceSettings
    _token: str | None = None

    def _request(self, method: str, path: str, body: Any | None = None) -> Any:
        from grounding_ops import services

        if self._token is None:
            self._token = services.airflow_token(self.settings)
        request = urllib.request.Request(
            f"{self.settings.airflow_url}/api/v2{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise RuntimeError(f"Airflow API {method} {path} failed ({exc.code}): {detail}") from None
        return json.loads(raw) if raw else None

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                dag = self._request("GET", f"/dags/{dag_id}")
                if dag:
                    return
            except RuntimeError:
                pass
            time.sleep(3)
        raise RuntimeError(f"DAG {dag_id} did not appear within {timeout:.0f}s; "
                           f"see {self.settings.log_dir / 'airflow-dag-processor.log'}")

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self._request("POST", f"/dags/{dag_id}/dagRuns",
                            {"logical_date": None, "conf": conf, "note": "started by grounding-ops demo"})
        return run["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/dags/{dag_id}/dagRuns?order_by=-start_date&limit=20")["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        path = f"/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}/taskInstances?limit=100"
        states: dict[str, str] = {}
        for ti in self._request("GET", path)["task_instances"]:
            name = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
            states[name] = ti.get("state") or "none"
        return states

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        path = (f"/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}"
                f"/taskInstances/{task_id}/xcomEntries/return_value")
        try:
            return self._request("GET", path).get("value")
        except RuntimeError:
            return None

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            state = self.run(dag_id, run_id)["state"]
            summary = ", ".join(f"{k}={v}" for k, v in sorted(self.task_states(dag_id, run_id).items()))
            line = f"  {dag_id}: {state} | {summary}"
            if line != last:
                print(line, flush=True)
                last = line
            if state in TERMINAL_STATES:
                return state
            time.sleep(5)
        raise RuntimeError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")

    def wait_for_new_run(self, dag_id: str, after: datetime, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.runs(dag_id):
                created = run.get("queued_at") or run.get("start_date")
                if created and datetime.fromisoformat(created.replace("Z", "+00:00")) >= after:
                    return run["dag_run_id"]
            time.sleep(3)
        raise RuntimeError(f"no {dag_id} run was started by the dataset asset within {timeout:.0f}s")


def _champion_summary(settings: ServiceSettings, model_name: str) -> str:
    import os

    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    from grounding_ops.registry.models import list_model_versions

    page = list_model_versions(model_name, page_size=50)
    for row in page.rows:
        if row.is_champion:
            shown = ", ".join(f"{k}={v:.3f}" for k, v in row.metrics.items() if isinstance(v, float))
            return f"{model_name} version {row.version} ({shown}; dataset {row.dataset_version})"
    return f"{model_name}: no champion yet"


def run_demo(args: argparse.Namespace) -> int:
    from grounding_ops import images, services
    from grounding_ops.data.synthetic import generate_synthetic

    settings = ServiceSettings.from_env()
    started_at = time.monotonic()
    print("== 1/5 services (S3, MLflow, Airflow, Docker) on 127.0.0.1", flush=True)
    services.start(settings)
    print("== 2/5 CPU trainer image (cached after the first build)", flush=True)
    images.build_trainer_cpu_image()

    print("== 3/5 synthetic grounding annotations with real images", flush=True)
    demo_dir = settings.state_dir / "demo"
    generate_synthetic(demo_dir / "input", n_images=args.images, seed=args.seed, n_invalid=args.invalid)

    client = AirflowRestClient(settings)
    for dag_id in ("grounding_data", "grounding_train"):
        client.wait_for_dag(dag_id)
        client.unpause(dag_id)

    print("== 4/5 grounding_data: ingest, validate, export, publish the dataset asset", flush=True)
    triggered = datetime.now(timezone.utc)
    data_run = client.trigger("grounding_data", demo_data_conf(demo_dir / "input"))
    if client.wait_for_run("grounding_data", data_run, timeout=args.timeout) != "success":
        print(f"grounding_data failed; task logs: {settings.log_dir / 'airflow-tasks'}", file=sys.stderr)
        return 1
    dataset = client.xcom("grounding_data", data_run, "publish") or {}

    print("== 5/5 grounding_train (started by the new dataset asset): train, evaluate, promote", flush=True)
    train_run = client.wait_for_new_run("grounding_train", after=triggered, timeout=300)
    state = client.wait_for_run("grounding_train", train_run, timeout=args.timeout)
    decision = client.xcom("grounding_train", train_run, "promote")

    print()
    print(f"Airflow UI        {settings.airflow_url}  (login {services.airflow_login_line(settings)})")
    print(f"Dataset version   {dataset.get('version', '?')}  {dataset.get('uri', '')}")
    print(f"Training run      grounding_train / {train_run}: {state}")
    if isinstance(decision, dict):
        print(f"Promotion         {decision.get('summary') or decision.get('reason') or decision}")
    elif state == "success":
        print("Promotion         skipped: nothing changed since the current champion")
    print(f"Champion          {_champion_summary(settings, args.model_name)}")
    print(f"MLflow            {settings.mlflow_uri}")
    print(f"Lineage events    {settings.state_dir / 'lineage' / 'openlineage-events.jsonl'}")
    print(f"Took              {time.monotonic() - started_at:.0f}s; `make services-stop` stops the services")
    return 0 if state == "success" else 1


def demo_data_conf(input_dir: Path) -> dict[str, Any]:
    """The grounding_data form values for the synthetic demo input.

    The pixel bounds are the tiny model's processor's, so the resized sizes recorded with each
    row are the sizes that model sees (and its answer coordinates refer to).
    """
    from grounding_ops.tiny_models import MAX_PIXELS, MIN_PIXELS

    return {
        "input_uri": str(input_dir / "annotations.jsonl"),
        "images_root": str(input_dir),
        "format": "jsonl",
        "protocol": "qwen2.5-vl",
        "val_fraction": 0.25,  # enough held-out rows for the promotion gate to mean something
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
    }


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the whole loop on the embedded local services")
    parser.add_argument("--images", type=int, default=48, help="synthetic images to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--invalid", type=int, default=2, help="deliberately broken rows (to show the quarantine)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each DAG run")
    parser.add_argument("--model-name", default="grounding-model")
    parser.set_defaults(func=run_demo)
