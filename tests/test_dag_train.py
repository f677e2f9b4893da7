"""grounding_train: schedule, form validation, skip decision, container settings and lineage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from grounding_ops.testing import marked_records

REPO = Path(__file__).resolve().parent.parent
DAG_FILE = REPO / "dags" / "grounding_train.py"
HEAVY = ("torch", "verl", "vllm", "transformers", "great_expectations", "mlflow")


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(DAG_FILE))
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture(scope="module")
def dag():
    return _dagbag().dags["grounding_train"]


@pytest.fixture(scope="module")
def serialized(dag):
    from airflow.serialization.serialized_objects import DagSerialization

    data = DagSerialization.to_dict(dag)
    return data, DagSerialization.from_dict(data)


# ----------------------------------------------------------------------------- parsing and schedule


def test_dag_file_imports_no_heavy_module():
    code = (
        "import runpy, sys, json; runpy.run_path(sys.argv[1]); "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(DAG_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_schedule_is_nightly_cron_or_dataset_asset(serialized):
    data, dag = serialized
    timetable = data["dag"]["timetable"]
    assert timetable["__type"] == "airflow.timetables.assets.AssetOrTimeSchedule"
    cron = timetable["__var"]["timetable"]
    assert cron["__type"] == "airflow.timetables.trigger.CronTriggerTimetable"
    assert cron["__var"]["expression"] == "0 2 * * *"
    assert cron["__var"]["timezone"] == "UTC"
    asset = timetable["__var"]["asset_condition"]
    bucket = os.environ.get("GROUNDING_OPS_BUCKET") or "grounding-ops"
    assert asset["__type"] == "asset" and asset["uri"] == f"s3://{bucket}/datasets/grounding"
    # the deserialized DAG (what the scheduler uses) agrees
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert dag.max_active_runs == 1 and dag.catchup is False
    deps = data["dag"]["dag_dependencies"]
    assert any(
        d["dependency_type"] == "asset" and d["target"] == "grounding_train" and d["label"] == asset["uri"]
        for d in deps
    ), deps
    # the promotion publishes the registered-model asset
    promote = next(t for t in data["dag"]["tasks"] if t["__var"]["task_id"] == "promote")["__var"]
    assert any(o["__var"]["uri"].startswith("mlflow://registry/models/") for o in promote["outlets"])


def test_cron_and_timezone_come_from_the_environment():
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GROUNDING_OPS_TRAIN_CRON": "30 3 * * 1-5",
        "GROUNDING_OPS_TRAIN_TIMEZONE": "Europe/Berlin",
    }
    code = (
        "import sys; from airflow.dag_processing.dagbag import DagBag; b = DagBag(sys.argv[1]); "
        "t = b.dags['grounding_train'].timetable.timetable; print(t.expression, t.timezone)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(DAG_FILE)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "30 3 * * 1-5 Europe/Berlin"


def test_every_task_has_doc_retries_and_timeout(dag):
    assert dag.doc_md and dag.owner == "grounding-ops" and dag.tags
    for task in dag.tasks:
        assert task.doc_md, f"{task.task_id} has no doc"
        assert task.execution_timeout is not None, task.task_id
        assert task.retries >= 1, task.task_id
    train = dag.get_task("train")
    assert train.retry_exponential_backoff
    assert [t.task_id for t in dag.topological_sort()] == [
        "resolve_dataset",
        "decide",
        "train",
        "list_checkpoints",
        "evaluate",
        "pick_best",
        "plan_decision",
        "evaluate_test",
        "promote",
    ]


def test_extra_links_on_train_and_evaluate(serialized):
    data, _ = serialized
    tasks = {t["__var"]["task_id"]: t["__var"] for t in data["dag"]["tasks"]}
    for task_id in ("train", "evaluate", "evaluate_test"):
        links = tasks[task_id].get("_operator_extra_links")
        assert set(links) == {"W&B run", "MLflow run", "Dataset manifest"}, (task_id, links)


# ----------------------------------------------------------------------------- the form


GOOD = {
    "preset": "tiny-cpu",
    "engine": "cpu",
    "dataset_version": "20250101T000000-ab12",
    "learning_rate": 1e-5,
    "rollout_n": 4,
    "kl_coef": 0.0,
    "total_steps": 10,
    "epochs": 1,
    "gpus_per_node": 1,
    "nodes": 1,
    "lora_rank": 0,
    "promotion_metric": "mean_iou",
    "min_delta": 0.0,
    "force": True,
    "max_eval_samples": 8,
    "confidence": 0.9,
    "min_test_samples": 50,
}


def _validate(dag, conf):
    # exactly what the api-server does before it creates a run (SerializedDAG.create_dagrun)
    return dag.params.deep_merge(conf).validate()


def test_form_fields_have_title_description_and_bounds(dag):
    for name, param in dag.params.items():
        schema = param.schema
        assert schema.get("title") and param.description, name
        assert "type" in schema, name
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if "string" in kinds:
            assert "enum" in schema or "pattern" in schema, f"{name}: strings need an enum or a pattern"
        if set(kinds) & {"number", "integer"}:
            assert "minimum" in schema and "maximum" in schema, name


def test_form_accepts_good_input_and_defaults(serialized):
    _, dag = serialized
    resolved = _validate(dag, GOOD)
    assert resolved["learning_rate"] == 1e-5 and resolved["engine"] == "cpu"
    defaults = _validate(dag, {})
    assert defaults["dataset_version"] == "latest" and defaults["learning_rate"] is None


@pytest.mark.parametrize(
    "key,value",
    [
        ("learning_rate", -1e-5),
        ("learning_rate", 0.5),
        ("learning_rate", "fast"),
        ("rollout_n", 1),
        ("rollout_n", 2.5),
        ("rollout_n", "8"),
        ("kl_coef", -0.1),
        ("total_steps", 0),
        ("epochs", 10_000),
        ("gpus_per_node", 0),
        ("nodes", 1000),
        ("lora_rank", -8),
        ("engine", "tpu"),
        ("preset", "qwen9-vl"),
        ("promotion_metric", "parse_failure_rate"),
        ("min_delta", 2),
        ("min_delta", "0.1"),
        ("force", "yes"),
        ("max_eval_samples", 0),
        ("learning_rate", float("nan")),
        ("kl_coef", float("nan")),
        ("min_delta", float("nan")),
        ("learning_rate", float("inf")),
        ("rollout_n", float("nan")),
        ("confidence", float("nan")),
        ("confidence", 1.0),
        ("confidence", 0.2),
        ("min_test_samples", 0),
        ("min_test_samples", 2.5),
        ("dataset_version", "latest; rm -rf /"),
        ("dataset_version", "../../etc/passwd"),
        ("dataset_version", "$(id)"),
        ("dataset_version", "v1\n--privileged"),
        ("dataset_version", ""),
        ("dataset_version", "-rf"),
        ("dataset_version", "x" * 101),
    ],
)
def test_form_refuses_bad_input(serialized, key, value):
    from airflow.sdk.exceptions import ParamValidationError

    _, dag = serialized
    with pytest.raises(ParamValidationError):
        _validate(dag, {**GOOD, key: value})


# ----------------------------------------------------------------------------- dataset resolution


def test_resolve_dataset_prefers_newest_asset_event_then_latest_json(tmp_path):
    from grounding_ops.pipeline.datasets import resolve_dataset
    from grounding_ops.pipeline.errors import PipelineError
    from grounding_ops.storage import open_store

    store = open_store(tmp_path)
    with pytest.raises(PipelineError, match="run the grounding_data DAG"):
        resolve_dataset("latest", store=store)
    for version in ("v1", "v2"):
        store.put_bytes(f"{version}/manifest.json", b"{}")
    store.put_bytes("latest.json", json.dumps({"version": "v1"}).encode())
    assert resolve_dataset("latest", store=store).version == "v1"
    ref = resolve_dataset("latest", store=store, asset_event_extras=[{"version": "v1"}, {"version": "v2"}])
    assert (ref.version, ref.source) == ("v2", "asset event")
    assert ref.uri == str(tmp_path / "v2") and ref.manifest_uri.endswith("v2/manifest.json")
    assert resolve_dataset("v1", store=store).source == "param"
    with pytest.raises(PipelineError, match="no manifest"):
        resolve_dataset("v3", store=store)
    with pytest.raises(PipelineError, match="not a version id"):
        resolve_dataset("../v1", store=store)


# ----------------------------------------------------------------------------- skip decision


def test_decide_training_cases():
    from grounding_ops.pipeline.model_state import ModelState, decide_training

    champ = ModelState("champion", "3", "v1", "fp1")
    assert decide_training("v1", "fp1", None).train
    skip = decide_training("v1", "fp1", champ)
    assert not skip.train and "nothing changed" in skip.reason and "force=true" in skip.reason
    assert decide_training("v1", "fp1", champ, force=True).train
    new_data = decide_training("v2", "fp1", champ)
    assert new_data.train and "new dataset version v2" in new_data.reason
    new_spec = decide_training("v1", "fp2", champ)
    assert new_spec.train and "settings changed" in new_spec.reason
    rejected = ModelState("challenger", "4", "v2", "fp1")
    again = decide_training("v2", "fp1", champ, rejected)
    assert not again.train and "not promoted" in again.reason


def test_fingerprint_tracks_training_settings_only():
    from grounding_ops.pipeline.model_state import training_fingerprint

    base = dict(GOOD)
    assert training_fingerprint(base) == training_fingerprint(
        {**base, "min_delta": 0.5, "dataset_version": "x", "force": False, "promotion_metric": "acc_at_0_5"}
    )
    assert training_fingerprint(base) != training_fingerprint({**base, "learning_rate": 2e-5})
    assert training_fingerprint(base) != training_fingerprint({**base, "engine": "gpu"})


def _register(client, name, dataset_version, fingerprint, alias, *, metric=0.5):
    run = client.create_run(
        client.create_experiment(f"exp-{time.time_ns()}"),
        tags={"grounding.dataset_version": dataset_version, "grounding.train_fingerprint": fingerprint},
    )
    client.log_metric(run.info.run_id, "acc_at_0_5", metric)
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except Exception:
        pass
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, alias, version.version)
    return version


def test_model_states_read_from_the_real_registry(mlflow_service):
    from mlflow.tracking import MlflowClient

    from grounding_ops.pipeline.model_state import decide_training, model_states

    client = MlflowClient(mlflow_service.uri)
    name = f"states-{time.time_ns()}"
    assert model_states(mlflow_service.uri, name) == (None, None)
    _register(client, name, "v1", "fp1", "champion")
    champion, challenger = model_states(mlflow_service.uri, name)
    assert (champion.version, champion.dataset_version, champion.fingerprint) == ("1", "v1", "fp1")
    assert challenger is None
    assert not decide_training("v1", "fp1", champion, challenger).train
    assert decide_training("v2", "fp1", champion, challenger).train


def _put_dataset(s3, bucket, version):
    prefix = f"datasets/grounding/{version}"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=json.dumps({"version": version}).encode())
    s3.put_object(
        Bucket=bucket,
        Key="datasets/grounding/latest.json",
        Body=json.dumps({"version": version, "manifest": f"s3://{bucket}/{prefix}/manifest.json"}).encode(),
    )


_RUN_DAG = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags["grounding_train"].test(run_conf={})
print("STATES " + json.dumps({"run": str(run.state), **{ti.task_id: str(ti.state) for ti in run.get_task_instances()}}))
"""


@pytest.mark.slow
def test_dag_test_skips_everything_when_nothing_changed(airflow_db, s3_service, mlflow_service, tmp_path):
    """A real run (dag.test, in its own process) against the local S3 and MLflow: the champion was trained
    on the published dataset version with the default settings, so the run skips before the container.
    The OpenLineage provider writes the task events through the file transport."""
    from mlflow.tracking import MlflowClient

    from grounding_ops.pipeline.train_params import param_schemas
    from grounding_ops.pipeline.model_state import training_fingerprint

    s3 = s3_service.client()
    version = f"v{time.time_ns()}"
    _put_dataset(s3, s3_service.bucket, version)
    model = f"skip-model-{time.time_ns()}"
    defaults = {k: v["default"] for k, v in param_schemas().items()}
    from grounding_ops.pipeline.docker_tasks import image_reference, resolve_image

    image = image_reference(resolve_image(defaults["engine"]))  # the fingerprint pins the trainer image
    _register(MlflowClient(mlflow_service.uri), model, version, training_fingerprint(defaults, image=image), "champion")

    events_file = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GROUNDING_OPS_MODEL_NAME": model,
        "GROUNDING_OPS_BUCKET": s3_service.bucket,
        "AIRFLOW_VAR_GROUNDING_BUCKET": s3_service.bucket,
        "AIRFLOW_CONN_GROUNDING_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": s3_service.env["AWS_ACCESS_KEY_ID"],
                "password": s3_service.env["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_service.endpoint, "region_name": "us-east-1"},
            }
        ),
        "AIRFLOW_CONN_GROUNDING_MLFLOW": json.dumps({"conn_type": "http", "host": mlflow_service.uri}),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "grounding-test",
    }
    out = subprocess.run(
        [sys.executable, "-c", _RUN_DAG, str(DAG_FILE)], capture_output=True, text=True, timeout=600, env=env
    )
    lines = marked_records(out.stdout, "STATES ")
    assert out.returncode == 0 and lines, (out.stdout[-3000:], out.stderr[-3000:])
    states = lines[-1]
    assert states["resolve_dataset"] == "success", states
    assert states["decide"] == "skipped", states
    for task_id in ("train", "list_checkpoints", "pick_best", "plan_decision", "promote"):
        assert states[task_id] == "skipped", states
    assert states["run"] == "success"
    assert "SKIP training: nothing changed" in out.stdout + out.stderr

    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    resolved = [
        e for e in events if e["job"]["name"] == "grounding_train.resolve_dataset" and e["eventType"] == "COMPLETE"
    ]
    assert resolved, [(e["job"]["name"], e["eventType"]) for e in events]
    inputs = [(d["namespace"], d["name"]) for d in resolved[-1]["inputs"]]
    assert (f"s3://{s3_service.bucket}", f"datasets/grounding/{version}/manifest.json") in inputs


# ----------------------------------------------------------------------------- containers


def test_container_names_are_unique_and_valid():
    from grounding_ops.pipeline.docker_tasks import container_name

    valid = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")
    run_id = "manual__2025-01-01T02:00:00.123456+00:00"
    names = {container_name("grounding_train", run_id, "evaluate", t, m) for t in (1, 2, 3) for m in (-1, 0, 1, 2)}
    assert len(names) == 12 and all(valid.match(n) and len(n) <= 120 for n in names)
    long_a = container_name("d" * 200, "r" * 200, "t", 1)
    long_b = container_name("d" * 200, "r" * 199 + "x", "t", 1)
    assert long_a != long_b and len(long_a) <= 120 and valid.match(long_a)
    assert valid.match(container_name("--weird", "$(id); rm -rf /", "t", 1))


def test_docker_kwargs_are_locked_down():
    from docker.types import DeviceRequest

    from grounding_ops.pipeline.docker_tasks import docker_kwargs

    cpu = docker_kwargs(
        engine="cpu",
        command=["grounding-ops", "train"],
        container_name="c1",
        private_environment={"AWS_SECRET_ACCESS_KEY": "s3cr3t"},
        environment={"A": "1"},
    )
    assert cpu["image"] == "grounding-ops/trainer-cpu:latest"
    assert cpu["network_mode"] == "host" and cpu["privileged"] is False and cpu["user"] == "1000:1000"
    assert cpu["auto_remove"] in ("success", "force") and cpu["retrieve_output"] is False
    assert cpu["mount_tmp_dir"] is False and cpu["mounts"] == [] and cpu["device_requests"] is None
    assert cpu["command"] == ["grounding-ops", "train"] and cpu["private_environment"] == {
        "AWS_SECRET_ACCESS_KEY": "s3cr3t"
    }
    assert "s3cr3t" not in json.dumps([cpu["command"], cpu["environment"]])
    gpu = docker_kwargs(
        engine="gpu",
        command=["x"],
        container_name="c2",
        private_environment={},
        image="registry.local/trainer@sha256:abc",
        gpus=1,
    )
    assert gpu["image"] == "registry.local/trainer@sha256:abc"
    assert len(gpu["device_requests"]) == 1
    request = gpu["device_requests"][0]
    assert isinstance(request, DeviceRequest) and request["Count"] == 1 and request["Capabilities"] == [["gpu"]]
    assert gpu["mounts"] == []
    with pytest.raises(ValueError, match="not a shell string"):
        docker_kwargs(
            engine="cpu", command="grounding-ops train; curl evil", container_name="c", private_environment={}
        )
    with pytest.raises(ValueError, match="private_environment"):
        docker_kwargs(
            engine="cpu", command=["x"], container_name="c", private_environment={}, environment={"WANDB_API_KEY": "k"}
        )
    with pytest.raises(ValueError, match="engine"):
        docker_kwargs(engine="tpu", command=["x"], container_name="c", private_environment={})


def _context(task_id="train", try_number=1, map_index=-1):
    ti = SimpleNamespace(
        dag_id="grounding_train",
        run_id="manual__2025-01-01T00:00:00+00:00",
        task_id=task_id,
        try_number=try_number,
        map_index=map_index,
    )
    return {"ti": ti}


@pytest.fixture()
def airflow_connections(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_GROUNDING_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIDEXAMPLE",
                "password": "very-secret-key",
                "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW_VAR_GROUNDING_WANDB_API_KEY", "wandb-secret-key")


def _plan(**extra):
    """A training plan's XCom form; with ``candidate=...`` an evaluation plan's."""
    plan = {
        "engine": "cpu",
        "command": ["grounding-ops", "train", "--dataset", "s3://b/datasets/grounding/v1"],
        "environment": {"PYTHONUNBUFFERED": "1"},
        "output_uri": "s3://b/runs/x/train",
        "dataset_version": "v1",
        "fingerprint": "fp",
        "links": {
            "manifest": "http://127.0.0.1:9/b/datasets/grounding/v1/manifest.json",
            "wandb": "javascript:alert(1)",
        },
        "inputs": ["s3://b/datasets/grounding/v1"],
        "outputs": ["s3://b/runs/x/train"],
    }
    plan.update(extra)
    if "candidate" not in plan:
        plan.setdefault("dataset_uri", "s3://b/datasets/grounding/v1")
    return plan


def test_operator_applies_the_plan_with_private_credentials(airflow_connections):
    from grounding_ops.pipeline.docker_tasks import TrainContainerOperator
    from grounding_ops.pipeline.links import DatasetManifestLink, WandbRunLink

    op = TrainContainerOperator(
        task_id="train", plan=_plan(engine="gpu", gpus=8, work_volume="grounding-ops-trainer-work")
    )
    assert "private_environment" not in op.template_fields and "plan" in op.template_fields
    op.apply_plan(_context(try_number=3))
    assert op.image == "grounding-ops/trainer-verl:latest" and op.device_requests[0]["Count"] == 8
    assert [m["Source"] for m in op.mounts] == ["grounding-ops-trainer-work"]
    assert op.network_mode == "host" and op.privileged is False and op.user == "1000:1000"
    assert op.auto_remove == "force" and op.mount_tmp_dir is False and op.retrieve_output is False
    assert op.container_name.endswith("-t3") and "manual" in op.container_name
    private = op.container_environment()
    assert private["AWS_SECRET_ACCESS_KEY"] == "very-secret-key"
    assert private["WANDB_API_KEY"] == "wandb-secret-key"
    assert private["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    rendered = json.dumps([op.command, op.environment, op.container_name, op.image])
    assert "secret" not in rendered
    assert DatasetManifestLink().get_link(op, ti_key=None).endswith("/manifest.json")
    assert WandbRunLink().get_link(op, ti_key=None) == ""  # only http(s) links are shown


def test_operator_reports_openlineage_inputs_and_outputs(airflow_connections):
    from grounding_ops.pipeline.docker_tasks import EvaluateContainerOperator
    from grounding_ops.pipeline.assets import mlflow_model_ref
    from grounding_ops.pipeline.lineage import operator_lineage

    op = EvaluateContainerOperator(
        task_id="evaluate",
        plan=_plan(
            inputs=["s3://b/datasets/grounding/v1", "s3://b/runs/x/train/final"],
            outputs=["s3://b/runs/x/eval/final"],
            candidate={"name": "final", "uri": "s3://b/runs/x/train/final", "step": 3, "role": "candidate"},
            split="val",
        ),
    )
    op.apply_plan(_context("evaluate", 1, 2))
    assert op.container_name.endswith("-m2-t1")
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        ("s3://b", "datasets/grounding/v1"),
        ("s3://b", "runs/x/train/final"),
    ]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://b", "runs/x/eval/final")]
    model = operator_lineage([], [mlflow_model_ref("grounding-model", 7)]).outputs[0]
    assert (model.namespace, model.name) == ("mlflow://registry", "models/grounding-model/versions/7")


def test_python_tasks_report_lineage_from_their_result():
    from airflow.sdk import DAG

    from grounding_ops.pipeline.lineage import LineagePythonOperator, lineage_task

    with DAG("lineage_probe", schedule=None):

        @lineage_task(task_id="probe")
        def probe():
            return {
                "summary": "x",
                "lineage": {
                    "inputs": ["s3://b/in/manifest.json"],
                    "outputs": [{"namespace": "http://m:5000", "name": "models/g/versions/1"}],
                },
            }

        op = probe().operator
    assert isinstance(op, LineagePythonOperator)
    op.execute({"ti": _context()["ti"], "params": {}})
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://b", "in/manifest.json")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("http://m:5000", "models/g/versions/1")]


def _training_summary(dataset_uri="s3://b/datasets/grounding/v1", **extra):
    """The train task's result as the next tasks get it."""
    from grounding_ops.pipeline.task_records import TrainingSummary

    fields = {
        "output_uri": "s3://b/runs/r/train",
        "dataset_version": "v1",
        "dataset_uri": dataset_uri,
        "steps_done": 3,
        "engine": "cpu",
        "fingerprint": "fp",
    }
    return TrainingSummary(**{**fields, **extra})


def test_plans_are_argument_lists_with_no_credentials():
    from grounding_ops.pipeline.task_records import EvaluationCandidate
    from grounding_ops.pipeline.datasets import DatasetRef
    from grounding_ops.pipeline.plans import plan_evaluations, plan_training

    dataset = DatasetRef("v1", "s3://b/datasets/grounding/v1", "s3://b/datasets/grounding/v1/manifest.json", "param")
    params = {**GOOD, "engine": "gpu", "learning_rate": 1e-6, "epochs": None}
    plan = plan_training(
        params,
        dataset,
        output_uri="s3://b/runs/r/train",
        fingerprint="fp",
        airflow_run="grounding_train/r",
        s3_endpoint="http://127.0.0.1:9310",
    )
    cmd = plan.command
    assert cmd[:3] == ["train", "--engine", "verl"]  # arguments of the image's grounding-ops entrypoint
    assert ["--set", "learning_rate=1e-06"] == cmd[
        cmd.index("learning_rate=1e-06") - 1 : cmd.index("learning_rate=1e-06") + 1
    ]
    assert "total_epochs" not in " ".join(cmd)  # empty fields keep the preset's values
    assert plan.links["manifest"] == "http://127.0.0.1:9310/b/datasets/grounding/v1/manifest.json"
    training = _training_summary(dataset.uri)
    plans = plan_evaluations(
        params,
        training,
        [
            EvaluationCandidate("final", "s3://b/runs/r/train/final", 11, "candidate"),
            EvaluationCandidate("base", "s3://b/models/base", -1, "base"),
        ],
        run_uri="s3://b/runs/r",
        airflow_run="grounding_train/r",
    )
    assert [p.output_uri for p in plans] == ["s3://b/runs/r/eval/final", "s3://b/runs/r/eval/base"]
    assert plans[1].command[plans[1].command.index("--role") + 1] == "base"
    assert all(isinstance(a, str) for p in plans for a in p.command)


def _result(fields):
    """An evaluate task's XCom value (a CheckpointEvaluation's dict form) with these fields."""
    from grounding_ops.pipeline.task_records import CheckpointEvaluation

    defaults = {"model_uri": f"s3://b/{fields['candidate']}", "dataset_version": "v1", "split": "val", "mlflow_url": ""}
    return CheckpointEvaluation(**{**defaults, **fields}).to_dict()


def test_list_checkpoints_and_pick_best(tmp_path):
    from grounding_ops.pipeline.errors import PipelineError
    from grounding_ops.pipeline.plans import list_checkpoints
    from grounding_ops.pipeline.results import pick_best
    from grounding_ops.storage import open_store

    store = open_store(tmp_path / "train")
    with pytest.raises(PipelineError, match="no evaluable checkpoint"):
        list_checkpoints(store, _training_summary(steps_done=0))
    for key in (
        "checkpoints/global_step_10/config.json",
        "checkpoints/global_step_2/huggingface/config.json",
        "checkpoints/global_step_5/actor/model_world_size_1_rank_0.pt",
        "checkpoints/global_step_12/config.json",  # an upload cut short: no completion marker
        "final/config.json",
    ):
        store.put_bytes(key, b"{}")
    for step in (2, 5, 10):
        store.put_bytes(f"checkpoints/global_step_{step}/checkpoint.complete.json", b"{}")
    base = tmp_path / "base"
    found = list_checkpoints(store, _training_summary(steps_done=10, base_model=str(base)))
    assert [c.name for c in found] == ["global_step_2", "global_step_10", "final", "base"]
    assert found[0].uri.endswith("global_step_2/huggingface") and found[-1].role == "base"
    assert [c.name for c in list_checkpoints(store, _training_summary(steps_done=0, base_model="tiny:qwen2-vl"))][
        -1
    ] == "final"

    results = [
        _result(
            {
                "candidate": "global_step_10",
                "role": "candidate",
                "step": 10,
                "metrics": {"acc_at_0_5": 0.4},
                "mlflow_run_id": "a",
                "eval_uri": "e1",
            }
        ),
        _result(
            {
                "candidate": "final",
                "role": "candidate",
                "step": 11,
                "metrics": {"acc_at_0_5": 0.4},
                "mlflow_run_id": "b",
                "eval_uri": "e2",
            }
        ),
        _result(
            {
                "candidate": "base",
                "role": "base",
                "step": -1,
                "metrics": {"acc_at_0_5": 0.9},
                "mlflow_run_id": "c",
                "eval_uri": "e3",
            }
        ),
    ]
    choice = pick_best(results, "acc_at_0_5")
    assert choice["best"]["candidate"] == "final" and choice["base"]["candidate"] == "base"
    assert "final = 0.4000" in choice["summary"]
    with pytest.raises(PipelineError, match="unknown"):
        pick_best(results, "loss")


@pytest.mark.docker
def test_on_kill_stops_and_removes_the_container(docker_daemon, base_image, airflow_connections, monkeypatch):
    """DockerOperator.on_kill (what Airflow calls when a task is killed) stops the real container."""
    import docker

    from grounding_ops.pipeline.docker_tasks import GroundingContainerOperator

    base = base_image
    client = docker.DockerClient(base_url=docker_daemon)
    monkeypatch.setenv("AIRFLOW_VAR_GROUNDING_TRAINER_IMAGE_CPU", base)
    op = GroundingContainerOperator(
        task_id="killme", plan={"engine": "cpu", "command": ["sleep", "300"]}, docker_url=docker_daemon
    )
    context = _context("killme", try_number=int(time.time()))
    errors: list[BaseException] = []

    def run():
        try:
            op.execute(context)
        except BaseException as exc:  # noqa: BLE001 - the killed container makes execute fail
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline and not op.container:
        time.sleep(0.2)
    assert op.container, "the container did not start"
    name = op.container_name
    container = client.containers.get(name)
    for _ in range(100):
        container.reload()
        if container.status == "running":
            break
        time.sleep(0.1)
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert container.attrs["HostConfig"]["Privileged"] is False
    assert container.attrs["Config"]["User"] == "1000:1000"
    assert not container.attrs["HostConfig"].get("Binds") and not container.attrs["Mounts"]
    env = container.attrs["Config"]["Env"]
    assert "AWS_SECRET_ACCESS_KEY=very-secret-key" in env
    op.on_kill()
    thread.join(timeout=60)
    assert not thread.is_alive() and errors, "execute should fail once the container is stopped"
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(name)


@pytest.mark.slow
def test_api_server_refuses_bad_conf_before_any_run(airflow_service):
    """The real api-server validates a trigger's conf against the Params: nothing is created."""
    import urllib.error

    deadline = time.time() + 240
    while True:
        try:
            airflow_service.api("GET", "/api/v2/dags/grounding_train")
            break
        except urllib.error.HTTPError:
            assert time.time() < deadline, "the dag-processor did not parse grounding_train"
            time.sleep(3)
    before = airflow_service.api("GET", "/api/v2/dags/grounding_train/dagRuns")["total_entries"]
    for conf in (
        {"learning_rate": "fast"},
        {"dataset_version": "latest; rm -rf /"},
        {"rollout_n": 1},
        {"engine": "tpu"},
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            airflow_service.api("POST", "/api/v2/dags/grounding_train/dagRuns", {"logical_date": None, "conf": conf})
        assert refused.value.code == 400, conf
    assert airflow_service.api("GET", "/api/v2/dags/grounding_train/dagRuns")["total_entries"] == before


def _write_evaluation(plan, dataset_uri, s3, hits, n=120):
    """What `grounding-ops evaluate` writes for a plan: per-sample predictions (the first ``hits`` samples
    right, IoU 0.8; the rest IoU 0.1), report, metrics.json last."""
    from grounding_ops.storage import open_store
    from grounding_ops.testing import write_stand_in_evaluation

    command = plan.command
    tags = dict(
        arg.split("=", 1)
        for arg in command[command.index("--tag") + 1 :: 2]
        if "=" in arg and arg.startswith("grounding.")
    )
    candidate = plan.candidate
    write_stand_in_evaluation(
        plan.output_uri,
        ious=[0.8 if i < hits else 0.1 for i in range(n)],
        model_uri=candidate.uri,
        dataset_uri=dataset_uri,
        dataset_version=plan.dataset_version,
        split=command[command.index("--split") + 1],
        role=candidate.role,
        tags=tags,
        s3_client=s3,
    )
    if candidate.role == "candidate":  # a stand-in model folder: promotion logs the candidate as an MLflow model
        open_store(candidate.uri, s3_client=s3).put_bytes("config.json", b'{"model_type": "qwen2_vl"}')


def test_record_pick_and_promote_against_the_real_registry(s3_service, mlflow_service, monkeypatch):
    """The platform side of evaluate (val) -> pick_best -> plan the test evaluations -> evaluate (test) ->
    promote, with real S3 and MLflow; then a second night on a new dataset version plans the champion's
    re-evaluation there, and the gate compares on the same test samples. The skip rule reads back what
    the promotion left in the registry."""
    from mlflow.tracking import MlflowClient

    from grounding_ops.pipeline.task_records import EvaluationCandidate
    from grounding_ops.pipeline.decision import promote_best
    from grounding_ops.pipeline.model_state import current_champion, decide_training, existing_evaluation, model_states
    from grounding_ops.pipeline.plans import decision_candidates, plan_evaluations
    from grounding_ops.pipeline.results import pick_best, record_evaluation
    from grounding_ops.vocabulary import DECISION_SPLIT
    from grounding_ops.storage import open_store

    monkeypatch.setenv("WANDB_MODE", "disabled")
    s3 = s3_service.client()
    name = f"promote-{time.time_ns()}"

    def night(version, val_hits, test_hits):
        run_uri = s3_service.uri("runs", f"grounding_train-{time.time_ns()}")
        dataset_uri = s3_service.uri("datasets", "grounding", version)
        training = _training_summary(dataset_uri, dataset_version=version, fingerprint="fp-7")
        candidates = [
            EvaluationCandidate("global_step_1", f"{run_uri}/train/checkpoints/global_step_1", 1, "candidate"),
            EvaluationCandidate("final", f"{run_uri}/train/final", 2, "candidate"),
            EvaluationCandidate("base", s3_service.uri("models", "base"), -1, "base"),
        ]
        results = []
        for plan in plan_evaluations(
            {"engine": "cpu"}, training, candidates, run_uri=run_uri, airflow_run="grounding_train/manual__x"
        ):
            _write_evaluation(plan, dataset_uri, s3, val_hits[plan.candidate.name])
            results.append(
                record_evaluation(
                    open_store(plan.output_uri, s3_client=s3), plan, tracking_uri=mlflow_service.uri
                ).to_dict()
            )
        # the evaluations of the DAG run are nested under one parent run
        parents = {
            MlflowClient(mlflow_service.uri).get_run(r["mlflow_run_id"]).data.tags.get("mlflow.parentRunId")
            for r in results
        }
        assert len(parents) == 1 and None not in parents
        choice = pick_best(results, "acc_at_0_5")
        champion = current_champion(mlflow_service.uri, name)
        champion_eval = (
            existing_evaluation(mlflow_service.uri, champion.model_uri, version, DECISION_SPLIT) if champion else None
        )
        models, _ = decision_candidates(choice, champion, champion_evaluation=champion_eval, base_evaluation=None)
        decision_results = []
        for plan in plan_evaluations(
            {"engine": "cpu"},
            training,
            models,
            run_uri=run_uri,
            airflow_run="grounding_train/manual__x",
            split=DECISION_SPLIT,
        ):
            key = plan.candidate.role if plan.candidate.role != "candidate" else plan.candidate.name
            _write_evaluation(plan, dataset_uri, s3, test_hits[key])
            decision_results.append(
                record_evaluation(
                    open_store(plan.output_uri, s3_client=s3), plan, tracking_uri=mlflow_service.uri
                ).to_dict()
            )
        return choice, models, decision_results

    choice, models, tested = night("v7", {"global_step_1": 30, "final": 70, "base": 20}, {"final": 80, "base": 20})
    assert choice["best"]["candidate"] == "final" and choice["split"] == "val"
    assert [m.role for m in models] == ["candidate", "base"]
    first = promote_best(
        choice,
        tested,
        min_delta=0.01,
        tracking_uri=mlflow_service.uri,
        name=name,
        airflow_run="grounding_train/manual__x",
        s3_client=s3,
    )
    assert first["promoted"] and first["version"] == "1", first["summary"]
    assert first["decision"]["split"] == "test" and first["decision"]["n"] == 120
    assert first["selection_split"] == "val" and first["decision_split"] == "test"
    assert "PROMOTED" in first["summary"] and "vs base 0.1667" in first["summary"] and "n=120" in first["summary"]
    assert first["lineage"]["outputs"] == [{"namespace": "mlflow://registry", "name": f"models/{name}/versions/1"}]
    again = promote_best(choice, tested, min_delta=0.01, tracking_uri=mlflow_service.uri, name=name, s3_client=s3)
    assert again["version"] == "1" and again["decision"]["changed"] is False
    version = MlflowClient(mlflow_service.uri).get_model_version(name, "1")
    assert version.tags["grounding.airflow_run"] == "grounding_train/manual__x"

    champion, challenger = model_states(mlflow_service.uri, name)
    assert (champion.dataset_version, champion.fingerprint) == ("v7", "fp-7")
    assert not decide_training("v7", "fp-7", champion, challenger).train
    assert decide_training("v8", "fp-7", champion, challenger).train

    # night 2: new dataset version; the champion is re-evaluated on its test split in the same run
    choice, models, tested = night("v8", {"global_step_1": 30, "final": 90, "base": 20}, {"final": 85, "champion": 80})
    assert [m.role for m in models] == ["candidate", "champion"]
    second = promote_best(choice, tested, min_delta=0.01, tracking_uri=mlflow_service.uri, name=name, s3_client=s3)
    champion_test = next(r for r in tested if r["role"] == "champion")
    assert second["decision"]["baseline"] == "champion"
    assert second["decision"]["baseline_run_id"] == champion_test["mlflow_run_id"]
    assert second["decision"]["dataset_version"] == "v8" and second["decision"]["split"] == "test"
    # 5 more right answers out of 120 on the same samples: a real but small gain, inside the noise
    assert not second["promoted"] and "within the noise" in second["summary"], second["summary"]
    assert current_champion(mlflow_service.uri, name).version == "1"


def test_selection_and_decision_splits_differ_in_every_path():
    """Every DAG path (first promotion against the base model, base evaluation reused, champion to
    re-evaluate, champion evaluation reused): checkpoints are chosen on val, the gate sees test only."""
    from grounding_ops.pipeline.task_records import EvaluationCandidate
    from grounding_ops.pipeline.decision import decided_on
    from grounding_ops.pipeline.errors import PipelineError
    from grounding_ops.pipeline.model_state import Champion
    from grounding_ops.pipeline.plans import decision_candidates, plan_evaluations
    from grounding_ops.pipeline.results import pick_best
    from grounding_ops.vocabulary import DECISION_SPLIT, SELECTION_SPLIT

    assert SELECTION_SPLIT == "val" and DECISION_SPLIT == "test"
    training = _training_summary("s3://b/datasets/grounding/v2", dataset_version="v2")
    candidates = [
        EvaluationCandidate("final", "s3://b/runs/r/train/final", 3, "candidate"),
        EvaluationCandidate("base", "s3://b/models/base", -1, "base"),
    ]
    selection = plan_evaluations({"engine": "cpu"}, training, candidates, run_uri="s3://b/runs/r", airflow_run="x")

    def split_of(plan):
        return plan.command[plan.command.index("--split") + 1]

    assert {split_of(p) for p in selection} == {"val"}
    val_results = [
        _result(
            {
                "candidate": p.candidate.name,
                "role": p.candidate.role,
                "step": p.candidate.step,
                "model_uri": p.candidate.uri,
                "split": "val",
                "metrics": {"mean_iou": 0.5},
                "mlflow_run_id": p.candidate.name,
                "eval_uri": p.output_uri,
            }
        )
        for p in selection
    ]
    choice = pick_best(val_results, "mean_iou")
    champion = Champion("1", "s3://b/runs/night1/train/final")
    paths = {
        "first promotion": (None, None, None, ["candidate", "base"]),
        "base evaluation reused": (None, None, "run-b", ["candidate"]),
        "champion re-evaluated": (champion, None, None, ["candidate", "champion"]),
        "champion evaluation reused": (champion, "run-c", None, ["candidate"]),
    }
    for path, (champ, champion_eval, base_eval, roles) in paths.items():
        models, note = decision_candidates(choice, champ, champion_evaluation=champion_eval, base_evaluation=base_eval)
        assert [m.role for m in models] == roles, path
        assert note, path
        plans = plan_evaluations(
            {"engine": "cpu"}, training, models, run_uri="s3://b/runs/r", airflow_run="x", split=DECISION_SPLIT
        )
        assert {split_of(p) for p in plans} == {"test"}, path
        assert not {p.output_uri for p in plans} & {p.output_uri for p in selection}, path
        test_results = [{**r, "split": "test"} for r in val_results if r["role"] == "candidate"]
        assert decided_on(choice, test_results)["split"] == "test"
        with pytest.raises(PipelineError, match="decide the promotion, which uses 'test' only"):
            decided_on(choice, val_results)
    with pytest.raises(PipelineError, match="pick the best checkpoint, which uses 'val' only"):
        pick_best([{**r, "split": "test"} for r in val_results], "mean_iou")
    with pytest.raises(PipelineError, match="must use another split"):
        decided_on({**choice, "split": "test"}, [{**val_results[0], "split": "test"}])


def test_integral_numbers_reach_the_trainer_as_integers():
    """JSON's 2.0 is the integer 2: the form accepts it (JSON Schema cannot tell them apart), and the
    container gets `rollout_n=2`, not `2.0` (which its spec would refuse); the fingerprint is the same."""
    from grounding_ops.pipeline.train_params import spec_overrides, training_values
    from grounding_ops.pipeline.model_state import training_fingerprint

    as_float = {**GOOD, "rollout_n": 2.0, "total_steps": 10.0}
    assert "rollout_n=2" in spec_overrides(as_float) and "total_steps=10" in spec_overrides(as_float)
    assert not any(o.endswith(".0") for o in spec_overrides(as_float) if o.startswith(("rollout_n", "total_steps")))
    assert training_fingerprint(as_float) == training_fingerprint({**GOOD, "rollout_n": 2})
    assert training_values(as_float)["rollout_n"] == 2 and isinstance(training_values(as_float)["rollout_n"], int)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            spec_overrides({**GOOD, "learning_rate": bad})
    with pytest.raises(ValueError, match="whole number"):
        spec_overrides({**GOOD, "rollout_n": 2.5})


def test_old_dataset_versions_without_a_test_split_are_refused_clearly():
    from grounding_ops.pipeline.datasets import DatasetRef, check_test_split
    from grounding_ops.pipeline.errors import PipelineError

    ref = DatasetRef("v0", "s3://b/datasets/grounding/v0", "s3://b/datasets/grounding/v0/manifest.json", "param")
    check_test_split({"files": {"train.parquet": {}, "val.parquet": {}, "test.parquet": {}}}, ref)
    with pytest.raises(PipelineError, match="v0 has no test split .*published before held-out test splits"):
        check_test_split({"files": {"train.parquet": {}, "val.parquet": {}}}, ref)


def test_read_training_result_refuses_missing_or_empty_runs(tmp_path):
    from grounding_ops.pipeline.errors import PipelineError
    from grounding_ops.pipeline.results import read_training_result, training_summary_line
    from grounding_ops.storage import open_store

    from grounding_ops.pipeline.task_records import TrainingPlan

    store = open_store(tmp_path)
    plan = TrainingPlan.from_dict(_plan())
    with pytest.raises(PipelineError, match="run.json is missing"):
        read_training_result(store, plan)
    from grounding_ops.training.run_record import RunRecord

    def run_record(steps: int) -> RunRecord:
        return RunRecord(
            dataset_version="v1",
            dataset_uri="s3://b/datasets/grounding/v1",
            spec={"model": "tiny:qwen2-vl"},
            engine="cpu",
            steps_done=steps,
            steps_trained=steps,
            target_steps=12,
            final_uri="s3://b/run/final",
            wandb_url="https://wandb.ai/x/y/runs/z",
            final_metrics={"reward_mean": 0.42},
        )

    run_record(0).save(store)
    with pytest.raises(PipelineError, match="nothing was trained"):
        read_training_result(store, plan)
    store.put_bytes("run.json", json.dumps({**run_record(3).to_dict(), "run_id": "r1"}).encode())
    with pytest.raises(PipelineError, match="keys this version does not know: run_id"):
        read_training_result(store, plan)  # no key is guessed: an unknown one is named
    run_record(12).save(store)
    summary = read_training_result(store, plan)
    assert summary.steps_done == 12 and summary.base_model == "tiny:qwen2-vl" and summary.fingerprint == "fp"
    assert training_summary_line(summary).startswith("trained 12 steps on dataset v1 (cpu engine)")


def _dag_env(s3_service, mlflow_service, **extra):
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GROUNDING_OPS_BUCKET": s3_service.bucket,
        "AIRFLOW_VAR_GROUNDING_BUCKET": s3_service.bucket,
        "AIRFLOW_CONN_GROUNDING_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": s3_service.env["AWS_ACCESS_KEY_ID"],
                "password": s3_service.env["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_service.endpoint, "region_name": "us-east-1"},
            }
        ),
        "AIRFLOW_CONN_GROUNDING_MLFLOW": json.dumps({"conn_type": "http", "host": mlflow_service.uri}),
        **extra,
    }


_RUN_DAG_CONF = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags["grounding_train"].test(run_conf=json.loads(sys.argv[2]))
print("STATES " + json.dumps({"run": str(run.state), **{
    ti.task_id + ("" if ti.map_index < 0 else f"[{ti.map_index}]"): str(ti.state) for ti in run.get_task_instances()}}))
"""


def _run_dag(env, conf):
    out = subprocess.run(
        [sys.executable, "-c", _RUN_DAG_CONF, str(DAG_FILE), json.dumps(conf)],
        capture_output=True,
        text=True,
        timeout=2400,
        env=env,
    )
    lines = marked_records(out.stdout, "STATES ")
    assert out.returncode == 0 and lines, (out.stdout[-6000:], out.stderr[-6000:])
    return lines[-1], out.stdout + out.stderr


@pytest.mark.slow
def test_first_unpause_without_a_dataset_skips_quietly(airflow_db, s3_service, mlflow_service):
    """The first scheduled run before grounding_data published anything: skipped, one clear line, no
    failure and no retry."""
    env = _dag_env(s3_service, mlflow_service, GROUNDING_OPS_DATASET_NAME=f"never-published-{time.time_ns()}")
    states, log = _run_dag(env, {})
    assert states["resolve_dataset"] == "skipped" and states["run"] == "success", states
    assert all(state == "skipped" for task, state in states.items() if task != "run"), states
    lines = [line for line in log.splitlines() if "SKIP: no dataset version has been published" in line]
    assert lines and "run the grounding_data DAG first" in lines[0], log[-3000:]
    assert "Traceback" not in log and "up_for_retry" not in log


@pytest.mark.slow
@pytest.mark.docker
def test_second_night_decides_against_the_champion_reevaluated_on_the_new_version(
    airflow_db, s3_service, mlflow_service, trainer_cpu_image, tmp_path
):
    """Nightly retraining on new data, through dag.test() with the real trainer containers, S3 and MLflow:
    the champion came from dataset version 1; version 2 is published; the run trains, evaluates the
    checkpoints on val, evaluates the chosen one AND the champion on version 2's test split, and
    decides on the paired test samples. Nobody evaluates anything by hand."""
    s3 = s3_service.client()
    token = f"{time.time_ns()}"
    name, dataset = f"night2-{token}", f"night2-{token}"
    # a tag of its own: the shared `latest` tag may be rebuilt from other code while this test runs
    image = f"grounding-ops/trainer-cpu:night2-{token}"
    subprocess.run(["docker", "tag", trainer_cpu_image, image], check=True, timeout=60)
    try:
        _second_night(s3_service, mlflow_service, s3, token, name, dataset, image, tmp_path)
    finally:
        subprocess.run(["docker", "rmi", image], capture_output=True, timeout=60)


def _second_night(s3_service, mlflow_service, s3, token, name, dataset, image, tmp_path):
    from mlflow.tracking import MlflowClient

    from grounding_ops.data.synthetic import publish_synthetic_version
    from grounding_ops.storage import open_store

    root = s3_service.uri("datasets", dataset)
    for version, images in (("v1", 24), ("v2", 40)):
        publish_synthetic_version(
            tmp_path / version,
            version=version,
            n_images=images,
            seed=3,
            val_fraction=0.2,
            test_fraction=0.3,
            store_uri=root,
            s3_client=s3,
        )

    # night 1's champion: a tiny model in S3, registered from an evaluation on version 1
    model_dir = tmp_path / "champion"
    model_dir.mkdir(mode=0o777)
    model_dir.chmod(0o777)
    subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            "--user",
            "1000:1000",
            "-v",
            f"{model_dir}:/out",
            image,
            "tiny-model",
            "--family",
            "qwen2-vl",
            "--output",
            "/out/model",
            "--seed",
            "1",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    champion_store = open_store(s3_service.uri("runs", f"night1-{token}", "train", "final"), s3_client=s3)
    for path in (model_dir / "model").rglob("*"):
        if path.is_file():
            champion_store.put_bytes(path.relative_to(model_dir / "model").as_posix(), path.read_bytes())
    client = MlflowClient(mlflow_service.uri)
    night1 = client.create_run(
        client.create_experiment(f"night1-{token}"),
        tags={"grounding.dataset_version": "v1", "grounding.train_fingerprint": "night-1"},
    )
    client.log_param(night1.info.run_id, "dataset_version", "v1")
    client.log_param(night1.info.run_id, "split", "test")
    client.log_param(night1.info.run_id, "model_uri", champion_store.uri)
    client.set_terminated(night1.info.run_id)
    client.create_registered_model(name)
    champion = client.create_model_version(
        name,
        champion_store.uri,
        run_id=night1.info.run_id,
        tags={"grounding.dataset_version": "v1", "grounding.evaluation_run_id": night1.info.run_id},
    )
    client.set_registered_model_alias(name, "champion", champion.version)

    env = _dag_env(
        s3_service,
        mlflow_service,
        GROUNDING_OPS_MODEL_NAME=name,
        GROUNDING_OPS_DATASET_NAME=dataset,
        AIRFLOW_VAR_GROUNDING_TRAINER_IMAGE_CPU=image,
        WANDB_MODE="disabled",
    )
    conf = {"dataset_version": "v2", "total_steps": 2, "max_eval_samples": 24, "min_test_samples": 10}
    states, log = _run_dag(env, conf)
    failure = log.find("Task failed with exception")
    if states["run"] != "success":
        pytest.fail(f"{states}\n" + (log[max(0, failure - 3000) : failure + 5000] if failure >= 0 else log[-8000:]))
    assert states["promote"] == "success" and states["evaluate_test[1]"] == "success", states
    assert "champion v1 (" in log and "is evaluated on test too" in log

    champion_evals = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=(
            f"params.model_uri = '{champion_store.uri}' and params.dataset_version = 'v2' and params.split = 'test'"
        ),
    )
    assert len(champion_evals) == 1, "the run evaluated the champion on version 2's test split itself"
    candidate = client.get_model_version(name, "2")
    tags = candidate.tags
    assert tags["grounding.promotion.baseline"] == "champion"
    assert tags["grounding.promotion.baseline_run_id"] == champion_evals[0].info.run_id
    assert tags["grounding.promotion.split"] == "test" and candidate.tags["grounding.dataset_version"] == "v2"
    n = int(tags["grounding.promotion.n"])  # the test split's samples, at most max_eval_samples
    assert 10 <= n <= 24
    decision_line = next(  # the promote task's summary line (the registry's own log line precedes it)
        line for line in log.splitlines() if "PROMOTED" in line and f"{name} v2" in line and "chosen on" in line
    )
    assert "vs champion v1" in decision_line and "CI" in decision_line and f"n={n}" in decision_line
    assert "on dataset v2 (test)" in decision_line and "chosen on val" in decision_line


def test_fingerprint_pins_the_trainer_image_digest(docker_daemon, base_image) -> None:
    from grounding_ops.pipeline.docker_tasks import image_reference
    from grounding_ops.pipeline.model_state import training_fingerprint

    ref = image_reference(base_image)
    assert ref.startswith(f"{base_image}@sha256:") or "@sha256:" in ref
    params = {"preset": "tiny-cpu", "engine": "cpu"}
    assert training_fingerprint(params, image=ref) != training_fingerprint(params, image=f"{base_image}@sha256:0")
    assert image_reference("grounding-ops/no-such-image:never") == "grounding-ops/no-such-image:never"
