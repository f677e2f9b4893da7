"""The "Grounding models" plugin inside Airflow's real api-server app, against a real MLflow server."""

from __future__ import annotations

import html
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

XSS = '<script>alert("x")</script>'


def _decide(client, name, version, run_id, *, promoted, candidate, baseline):
    """Decision tags as grounding_ops.registry.promotion records them."""
    tags = {
        "eval_run_id": run_id,
        "metric": "acc_at_0_5",
        "min_delta": "0.01",
        "candidate_value": repr(candidate),
        "baseline": "champion",
        "baseline_value": repr(baseline),
        "champion_before": "3",
        "reason": "beats the champion" if promoted else "does not beat the champion by min_delta",
        "decided_at": f"2026-01-0{version}T02:00:00+00:00",
        "promoted": "true" if promoted else "false",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, f"grounding.promotion.{key}", value)


@pytest.fixture(scope="module")
def registry(mlflow_service):
    """A registered model with 5 versions; v4 is champion, v5 challenger; v2 carries hostile tags."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_service.uri)
    name = f"plugin-model-{time.time_ns()}"
    client.create_registered_model(name)
    experiment = client.create_experiment(f"plugin-exp-{time.time_ns()}")
    for number in range(1, 6):
        run = client.create_run(experiment)
        client.log_param(run.info.run_id, "dataset_version", f"ds-{number}")  # as log_evaluation records it
        for metric, value in (
            ("acc_at_0_5", 0.1 * number),
            ("acc_at_0_75", 0.05 * number),
            ("mean_iou", 0.08 * number),
        ):
            client.log_metric(run.info.run_id, metric, value)
        client.set_terminated(run.info.run_id)
        version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        client.set_model_version_tag(
            name, version.version, "grounding.airflow_run", f"grounding_train/manual__run-{number}"
        )
        if number == 3:  # a non-finite metric tag must not break the JSON answer
            client.set_model_version_tag(name, version.version, "grounding.metric.acc_at_0_5", "0.3")
            client.set_model_version_tag(name, version.version, "grounding.metric.mean_iou", "nan")
        if number == 4:  # the champion: per-source metrics on its evaluation run, a recorded decision
            for source, value in (("shapes", 0.5), ("vindr", 0.25)):
                client.log_metric(run.info.run_id, f"source/{source}/acc_at_0_5", value)
            client.log_metric(run.info.run_id, "source/vindr/mean_iou", float("nan"))
            _decide(client, name, version.version, run.info.run_id, promoted=True, candidate=0.4, baseline=0.3)
        if number == 5:
            _decide(client, name, version.version, run.info.run_id, promoted=False, candidate=0.5, baseline=0.4)
        if number == 2:
            client.set_model_version_tag(name, version.version, "grounding.dataset_version", XSS)
            client.set_model_version_tag(name, version.version, "grounding.wandb_run", "javascript:alert(1)")
            client.set_model_version_tag(
                name, version.version, "grounding.training_output_uri", '"><img src=x onerror=alert(1)>'
            )
    client.set_registered_model_alias(name, "champion", "4")
    client.set_registered_model_alias(name, "challenger", "5")
    return name


@pytest.fixture(scope="module")
def api(airflow_db, mlflow_service, registry):
    """Airflow's own api-server FastAPI app (plugins from plugins/, SimpleAuthManager) in-process."""
    from fastapi.testclient import TestClient

    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_CONN_GROUNDING_MLFLOW", json.dumps({"conn_type": "http", "host": mlflow_service.uri}))
    mp.setenv("GROUNDING_OPS_MODEL_NAME", registry)
    from grounding_ops.pipeline.models_page import PAGE_MLFLOW_VARIABLES

    for key in PAGE_MLFLOW_VARIABLES:  # the page shortens MLflow's timeouts in its process: undo after
        mp.delenv(key, raising=False)
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    app = create_app("core")
    with TestClient(app) as client:
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
        yield client, token
    mp.undo()


@pytest.fixture()
def roleless_token(api):
    """A valid Airflow JWT of a user whose role grants nothing (may not read any DAG)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="nobody", role=None))


def test_plugin_is_registered_with_nav_entry_and_links(api):
    client, token = api
    response = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    plugin = next(p for p in response.json()["plugins"] if p["name"] == "grounding_models")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/grounding"
    view = plugin["external_views"][0]
    assert view["name"] == "Grounding models" and view["href"] == "/grounding/models" and view["url_route"]
    links = " ".join(plugin["operator_extra_links"])
    for cls in ("WandbRunLink", "MlflowRunLink", "DatasetManifestLink"):
        assert cls in links


def test_the_plugin_loads_once_through_its_entry_point(tmp_path):
    """Airflow finds the plugin through the package's ``airflow.plugins`` entry point, once, with the
    checkout on ``sys.path`` as the services and tests put it (a second copy of the package metadata in
    the checkout makes Airflow refuse the plugin a second time and, with that import error, drop the
    OpenLineage task events)."""
    import subprocess
    import sys

    probe = (
        "import json; from airflow import plugins_manager as pm; plugins, errors = pm._get_plugins(); "
        "print(json.dumps({'names': [p.name for p in plugins], 'errors': errors}))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    }
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["names"].count("grounding_models") == 1, found
    assert not found["errors"], (
        f"{found['errors']}: remove grounding_ops.egg-info from the checkout (`pip install -e .` leaves it; "
        "`make setup` removes it)"
    )
    assert not (REPO / "plugins" / "grounding_models.py").exists(), "the plugin is the package's, not a folder file"


def test_unauthenticated_requests_are_refused(api):
    client, _ = api
    assert client.get("/grounding/api/models").status_code == 401
    bad = client.get("/grounding/api/models", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code in (401, 403)
    forged = client.get("/grounding/api/models", cookies={"_token": "eyJhbGciOiJub25lIn0.e30."})
    assert forged.status_code in (401, 403)
    page = client.get("/grounding/models", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 302 and "login" in page.headers["location"]
    assert client.get("/grounding/models", headers={"Accept": "application/json"}).status_code == 401


def test_json_lists_versions_newest_first_with_champion(api, registry):
    client, token = api
    response = client.get(
        "/grounding/api/models", params={"model": registry}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    data = response.json()
    versions = data["versions"]
    assert [v["version"] for v in versions] == ["5", "4", "3", "2", "1"]
    champion = [v for v in versions if v["champion"]]
    assert [v["version"] for v in champion] == ["4"] and "challenger" in versions[0]["aliases"]
    v4 = versions[1]
    assert v4["metrics"]["acc_at_0_5"] == pytest.approx(0.4) and v4["metrics"]["mean_iou"] == pytest.approx(0.32)
    assert v4["dataset_version"] == "ds-4"
    assert v4["mlflow_url"].endswith(f"/#/models/{registry}/versions/4")
    assert v4["airflow_url"].endswith("/dags/grounding_train/runs/manual__run-4")
    assert versions[3]["wandb_url"] == ""  # javascript: is never a link


def test_pagination_follows_tokens_without_overlap(api, registry):
    client, token = api
    seen, token_param = [], None
    for _ in range(5):
        params = {"model": registry, "page_size": 2}
        if token_param:
            params["page_token"] = token_param
        data = client.get("/grounding/api/models", params=params, cookies={"_token": token}).json()
        assert len(data["versions"]) <= 2
        seen += [v["version"] for v in data["versions"]]
        token_param = data["next_page_token"]
        if not token_param:
            break
    assert seen == ["5", "4", "3", "2", "1"]
    assert client.get("/grounding/api/models", params={"page_size": 0}, cookies={"_token": token}).status_code == 422
    assert (
        client.get("/grounding/api/models", params={"model": "x'; drop"}, cookies={"_token": token}).status_code == 422
    )


def test_html_page_escapes_registry_values_and_highlights_champion(api, registry):
    client, token = api
    response = client.get("/grounding/models", params={"model": registry}, cookies={"_token": token})
    assert response.status_code == 200, response.text
    page = response.text
    assert "Grounding models" in page and "Acc@0.5" in page and "Acc@0.75" in page and "mean IoU" in page
    assert XSS not in page and html.escape(XSS) in page
    assert "<img src=x" not in page and "javascript:" not in page
    assert '<tr class="champion" data-version="4">' in page
    assert page.count('<tr class="champion"') == 1 and page.count('class="alias champion"') == 1
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_html_page_paginates(api, registry):
    client, token = api
    page = client.get("/grounding/models", params={"model": registry, "page_size": 3}, cookies={"_token": token}).text
    assert page.count('<tr class="version"') + page.count('<tr class="champion"') == 3 and 'id="older"' in page


def test_only_the_configured_model_is_readable(api, mlflow_service):
    client, token = api
    other = f"other-model-{time.time_ns()}"
    from mlflow.tracking import MlflowClient

    MlflowClient(mlflow_service.uri).create_registered_model(other)
    response = client.get("/grounding/api/models", params={"model": other}, cookies={"_token": token})
    assert response.status_code == 404 and "GROUNDING_OPS_MODEL_NAME" in response.json()["detail"]


def test_a_user_without_permission_on_grounding_train_is_refused(api, roleless_token):
    client, _ = api
    assert client.get("/grounding/api/models", cookies={"_token": roleless_token}).status_code == 403
    page = client.get(
        "/grounding/models", headers={"Accept": "text/html"}, cookies={"_token": roleless_token}, follow_redirects=False
    )
    assert page.status_code == 403 and "champion" not in page.text


def test_non_finite_metric_tags_are_shown_as_missing(api, registry):
    client, token = api
    response = client.get("/grounding/api/models", cookies={"_token": token})
    assert response.status_code == 200, response.text
    v3 = next(v for v in response.json()["versions"] if v["version"] == "3")
    assert v3["metrics"]["acc_at_0_5"] == pytest.approx(0.3) and v3["metrics"]["mean_iou"] is None


def test_page_shows_chart_champion_sources_and_decisions(api, registry):
    client, token = api
    data = client.get("/grounding/api/models", cookies={"_token": token}).json()
    assert data["champion"] == "4" and data["metric"] == "acc_at_0_5"
    assert data["champion_sources"] == {"shapes": {"acc_at_0_5": 0.5}, "vindr": {"acc_at_0_5": 0.25}}
    decisions = {d["version"]: d for d in data["decisions"]}
    assert decisions["4"]["promoted"] and decisions["4"]["candidate_value"] == 0.4
    assert not decisions["5"]["promoted"] and decisions["5"]["baseline_value"] == 0.4
    assert (
        decisions["5"]["evaluation_url"].startswith("http://127.0.0.1")
        and "/#/runs/" in decisions["5"]["evaluation_url"]
    )
    page = client.get("/grounding/models", cookies={"_token": token}).text
    chart = page[page.index('<svg id="chart"') : page.index("</svg>")]
    assert [f'data-version="{n}"' in chart for n in "12345"] == [True] * 5
    assert 'data-source="vindr"' in page and "0.2500" in page
    assert '<tr data-decision="5">' in page and "not promoted" in page and "0.5000" in page
    assert "evaluation run" in page and "Airflow run" in page


class _DeadMlflow:
    """An MLflow address that never answers: ``stalled`` accepts connections and stays silent,
    ``stopped`` refuses them (a port nothing listens on)."""

    def __init__(self, kind: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if kind == "stalled":
            self.sock.listen(64)
        else:
            self.sock.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("kind", ["stalled", "stopped"])
def test_api_server_keeps_answering_while_mlflow_is_down(api, monkeypatch, kind):
    client, token = api
    dead = _DeadMlflow(kind)
    monkeypatch.setenv(
        "AIRFLOW_CONN_GROUNDING_MLFLOW",
        json.dumps({"conn_type": "http", "host": f"http://admin:hunter2-secret@127.0.0.1:{dead.port}"}),
    )
    answers: dict[str, object] = {}

    def open_page(key: str, path: str) -> None:
        started = time.monotonic()
        response = client.get(path, cookies={"_token": token}, headers={"Accept": "text/html"})
        answers[key] = (response, time.monotonic() - started)

    try:
        pages = [
            threading.Thread(target=open_page, args=(f"page{i}", p))
            for i, p in enumerate(("/grounding/models", "/grounding/api/models?page_size=7"))
        ]
        for thread in pages:
            thread.start()
        time.sleep(0.3)  # both page requests are now waiting on MLflow
        for path in ("/api/v2/version", "/api/v2/monitor/health", "/"):
            started = time.monotonic()
            response = client.get(path, headers={"Authorization": f"Bearer {token}"})
            elapsed = time.monotonic() - started
            assert response.status_code == 200, (path, response.status_code)
            assert elapsed < 1.0, f"{path} took {elapsed:.2f}s while MLflow was {kind}"
        for thread in pages:
            thread.join(30)
            assert not thread.is_alive(), "the page did not give up on MLflow within 30 s"
    finally:
        dead.close()
    for key in ("page0", "page1"):
        response, elapsed = answers[key]
        assert response.status_code == 503, response.text
        assert "MLflow is unavailable" in response.text and elapsed < 15
        assert "hunter2-secret" not in response.text and "admin:" not in response.text
