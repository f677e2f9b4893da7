"""The "Grounding models" plugin inside Airflow's real api-server app, against a real MLflow server."""

from __future__ import annotations

import html
import json
import time

import pytest

XSS = '<script>alert("x")</script>'


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
        for metric, value in (("acc_at_0_5", 0.1 * number), ("acc_at_0_75", 0.05 * number), ("mean_iou", 0.08 * number)):
            client.log_metric(run.info.run_id, metric, value)
        client.set_terminated(run.info.run_id)
        version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        client.set_model_version_tag(name, version.version, "grounding.airflow_run",
                                     f"grounding_train/manual__run-{number}")
        if number == 2:
            client.set_model_version_tag(name, version.version, "grounding.dataset_version", XSS)
            client.set_model_version_tag(name, version.version, "grounding.wandb_run", "javascript:alert(1)")
            client.set_model_version_tag(name, version.version, "grounding.training_run_id", '"><img src=x onerror=alert(1)>')
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
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    app = create_app("core")
    with TestClient(app) as client:
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
        yield client, token
    mp.undo()


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
    response = client.get("/grounding/api/models", params={"model": registry},
                          headers={"Authorization": f"Bearer {token}"})
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
    assert client.get("/grounding/api/models", params={"model": "x'; drop"}, cookies={"_token": token}).status_code == 422


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
    assert page.count("data-version=") == 3 and 'id="older"' in page


def test_unknown_model_gives_an_empty_page_with_a_hint(api):
    client, token = api
    data = client.get("/grounding/api/models", params={"model": "never-registered"}, cookies={"_token": token}).json()
    assert data["versions"] == [] and "run grounding_train" in data["error"]
