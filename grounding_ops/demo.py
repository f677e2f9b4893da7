"""``grounding-ops demo``: the whole loop on the embedded defaults, through the running scheduler.

Starts the local services (S3, MLflow, Airflow, Docker), builds the CPU trainer image, and lives
two nights of the product's loop through Airflow's REST API and the scheduler:

* night 1: a synthetic grounding dataset with real images is published by ``grounding_data``; the
  asset-triggered ``grounding_train`` run trains, chooses a checkpoint on ``val`` and decides on
  ``test`` against the base model;
* night 2: new annotations arrive (the same images plus new ones: a new dataset version); the next
  ``grounding_train`` run retrains, re-evaluates the champion on the new version's test split in the
  same run, and decides against it. Nobody runs anything by hand.

It prints both decisions with their numbers, the UI and its login, the champion and its metrics,
the lineage events, and how long each night and the whole demo took.
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
from grounding_ops.vocabulary import DEFAULT_MODEL_NAME, TRAIN_PRESET_ENV

TERMINAL_STATES = {"success", "failed"}
# Night 1 publishes DEMO_IMAGES images, night 2 DEMO_NEW_IMAGES more. About 1.46 questions per image
# (one per shape). The form's preset in the local services is the CPU twin's learning recipe
# (DEMO_TRAIN_PRESET), which needs about 2,000 images: with fewer its warm-up memorises the training
# split. With these fractions night 1 holds out ~145 val samples (to choose the checkpoint) and ~290
# test samples (to decide), well over the gate's minimum of 100, and evaluation stays short.
DEMO_IMAGES = 2000
DEMO_NEW_IMAGES = 300
DEMO_VAL_FRACTION = 0.05
DEMO_TEST_FRACTION = 0.1


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
        for attempt in range(4):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
                    raw = response.read()
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                # The embedded SQLite metadata DB is busy while the scheduler writes (a rolled-back
                # request): wait and ask again; anything else is an error.
                if exc.code == 500 and "Database error" in detail and attempt < 3:
                    time.sleep(2.0 * (attempt + 1))
                    continue
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
        raise RuntimeError(
            f"DAG {dag_id} did not appear within {timeout:.0f}s; "
            f"see {self.settings.log_dir / 'airflow-dag-processor.log'}"
        )

    def form_default(self, dag_id: str, param: str) -> Any:
        """The default of one of the DAG's Params, as the running Airflow parsed it (the details'
        ``params`` hold each Param's spec: ``value``, ``schema``, ``description``, ``source``)."""
        params = (self._request("GET", f"/dags/{dag_id}/details") or {}).get("params") or {}
        entry = params.get(param)
        if not isinstance(entry, dict) or "value" not in entry:
            raise RuntimeError(f"the running Airflow's {dag_id} has no Param {param!r}: is it this checkout's DAG?")
        return entry["value"]

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self._request(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            {"logical_date": None, "conf": conf, "note": "started by grounding-ops demo"},
        )
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
        path = (
            f"/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}"
            f"/taskInstances/{task_id}/xcomEntries/return_value"
        )
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


@dataclass
class Night:
    dataset: dict[str, Any]
    train_run: str
    state: str
    decision: Any
    seconds: float


def upload_input(settings: ServiceSettings, input_dir: Path) -> str:
    """Copy the demo input to the bucket's drop zone ``s3://<bucket>/incoming/demo`` (the data DAG
    reads only from its configured input roots); returns that URI."""
    from grounding_ops import services
    from grounding_ops.pipeline.input_roots import DEFAULT_INPUT_PREFIX
    from grounding_ops.storage import open_store

    uri = f"s3://{settings.bucket}/{DEFAULT_INPUT_PREFIX}/demo"
    store = open_store(uri, s3_client=services.s3_client(settings))
    for path in sorted(input_dir.rglob("*")):
        if path.is_file():
            store.upload_file(path.relative_to(input_dir).as_posix(), path)
    return uri


def _night(client: AirflowRestClient, settings: ServiceSettings, input_dir: Path, timeout: float) -> Night | None:
    """Publish ``input_dir`` with grounding_data and follow the grounding_train run its asset starts."""
    started = time.monotonic()
    triggered = datetime.now(timezone.utc)
    data_run = client.trigger("grounding_data", demo_data_conf(upload_input(settings, input_dir)))
    if client.wait_for_run("grounding_data", data_run, timeout=timeout) != "success":
        print(f"grounding_data failed; task logs: {settings.log_dir / 'airflow-tasks'}", file=sys.stderr)
        return None
    dataset = client.xcom("grounding_data", data_run, "publish") or {}
    print(
        f"  published dataset version {dataset.get('version', '?')}; grounding_train starts from its asset", flush=True
    )
    train_run = client.wait_for_new_run("grounding_train", after=triggered, timeout=300)
    state = client.wait_for_run("grounding_train", train_run, timeout=timeout)
    decision = client.xcom("grounding_train", train_run, "promote")
    return Night(dataset, train_run, state, decision, time.monotonic() - started)


def _decision_line(night: Night) -> str:
    if isinstance(night.decision, dict):
        return str(night.decision.get("summary") or night.decision.get("reason") or night.decision)
    if night.state == "success":
        return "skipped: nothing changed since the current champion"
    return f"none: the run ended {night.state}"


def run_demo(args: argparse.Namespace) -> int:
    from grounding_ops import images, services
    from grounding_ops.data.synthetic import generate_synthetic

    settings = ServiceSettings.from_env()
    started_at = time.monotonic()
    print("== 1/5 services (S3, MLflow, Airflow, Docker) on 127.0.0.1", flush=True)
    services.start(settings)
    print("== 2/5 CPU trainer image (cached after the first build)", flush=True)
    images.build_trainer_cpu_image()

    client = AirflowRestClient(settings)
    for dag_id in ("grounding_data", "grounding_train"):
        client.wait_for_dag(dag_id)
        client.unpause(dag_id)
    preset = client.form_default("grounding_train", "preset")
    if preset != settings.train_preset:
        print(
            f"the running Airflow trains preset {preset!r} by default, not {settings.train_preset!r} "
            f"({TRAIN_PRESET_ENV}): it was started with other settings. Run `make services-stop`, then "
            "`make demo` again.",
            file=sys.stderr,
        )
        return 1
    print(f"   nightly and asset-triggered runs train preset {preset}", flush=True)

    input_dir = settings.state_dir / "demo" / "input"
    # The same seed and groups both nights: night 2's file holds night 1's annotations (same images,
    # same groups, so the same splits) plus those of the new images.
    groups = max(1, args.images)
    nights: list[Night] = []
    for number, n_images in ((1, args.images), (2, args.images + args.new_images)):
        what = "a first dataset" if number == 1 else f"{args.new_images} new images' annotations arrive"
        step = 3 if number == 1 else 4
        print(
            f"== {step}/5 night {number}: {what} ({n_images} images); grounding_data publishes a version, "
            "grounding_train trains, evaluates and decides",
            flush=True,
        )
        generate_synthetic(input_dir, n_images=n_images, seed=args.seed, n_invalid=args.invalid, patients=groups)
        night = _night(client, settings, input_dir, args.timeout)
        if night is None:
            return 1
        nights.append(night)
        print(f"  night {number}: {_decision_line(night)}", flush=True)

    print("== 5/5 where everything is", flush=True)
    print()
    print(f"Airflow UI        {settings.airflow_url}  (login {services.airflow_login_line(settings)})")
    for number, night in enumerate(nights, start=1):
        print(
            f"Night {number}           dataset {night.dataset.get('version', '?')}; grounding_train / "
            f"{night.train_run}: {night.state} ({night.seconds:.0f}s)"
        )
        print(f"  decision        {_decision_line(night)}")
    print(f"Champion          {_champion_summary(settings, args.model_name)}")
    print(f"MLflow            {settings.mlflow_uri}")
    print(f"Lineage events    {settings.state_dir / 'lineage' / 'openlineage-events.jsonl'}")
    print(f"Took              {time.monotonic() - started_at:.0f}s in all; `make services-stop` stops the services")
    return 0 if all(n.state == "success" for n in nights) else 1


def demo_data_conf(input_uri: str) -> dict[str, Any]:
    """The grounding_data form values for the synthetic demo input.

    The pixel bounds are the tiny model's processor's, so the resized sizes recorded with each
    row are the sizes that model sees (and its answer coordinates refer to).
    """
    from grounding_ops.tiny_models import MAX_PIXELS, MIN_PIXELS

    return {
        "input_uri": f"{input_uri}/annotations.jsonl",
        "images_root": input_uri,
        "format": "jsonl",
        "protocol": "qwen2.5-vl",
        "val_fraction": DEMO_VAL_FRACTION,  # chooses the checkpoint
        "test_fraction": DEMO_TEST_FRACTION,  # decides the promotion (>= 100 samples)
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
    }


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the whole loop on the embedded local services")
    parser.add_argument("--images", type=int, default=DEMO_IMAGES, help="synthetic images of night 1")
    parser.add_argument(
        "--new-images",
        type=int,
        default=DEMO_NEW_IMAGES,
        help="images whose annotations arrive for night 2 (a new dataset version)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--invalid", type=int, default=2, help="deliberately broken rows (to show the quarantine)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each DAG run")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.set_defaults(func=run_demo)
