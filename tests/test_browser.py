"""The real Airflow UI in headless Chromium: log in, trigger grounding_train from its form, find the
champion on the "Grounding models" page. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("GROUNDING_OPS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MODEL = "grounding-model"  # the default registered model name of the services


def _wait_for_dag(airflow_service, dag_id: str, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        try:
            return airflow_service.api("GET", f"/api/v2/dags/{dag_id}")
        except urllib.error.HTTPError as exc:
            last = exc
            time.sleep(3)
    raise AssertionError(f"the dag-processor did not parse {dag_id} within {timeout}s ({last})")


@pytest.fixture(scope="module")
def champion(mlflow_service) -> str:
    """A champion version of the services' registered model (as the promote task would leave it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_service.uri)
    try:
        client.create_registered_model(MODEL)
    except Exception:  # already there from another test of this session
        pass
    experiment = client.create_experiment(f"browser-{time.time_ns()}")
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "dataset_version", "browser-ds")
    for metric, value in (("acc_at_0_5", 0.61), ("acc_at_0_75", 0.42), ("mean_iou", 0.55)):
        client.log_metric(run.info.run_id, metric, value)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    return str(version.version)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        try:
            yield browser
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    if name != "99-failure":
        (ARTIFACTS / "99-failure.png").unlink(missing_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_ui_login_trigger_form_and_models_page(airflow_service, champion, browser):
    _wait_for_dag(airflow_service, "grounding_train")
    runs_before = airflow_service.api("GET", "/api/v2/dags/grounding_train/dagRuns")["total_entries"]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        # log in through the real login form
        page.goto(f"{airflow_service.url}/")
        page.wait_for_selector("input[name=username]")
        page.fill("input[name=username]", airflow_service.username)
        page.fill("input[name=password]", airflow_service.password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/auth/login" not in url and "login" not in url.split("?")[0])
        _shot(page, "01-home")

        # the trigger form shows the Params with their titles
        page.goto(f"{airflow_service.url}/dags/grounding_train")
        page.get_by_role("button", name="Trigger").first.click()
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        page.wait_for_timeout(1000)  # the form's sections open with an animation
        # the form's sections (train_params.SECTIONS), each opened when its first field is hidden
        for section, first_title in (
            ("What to train", "Model preset"),
            ("Training settings", "Learning rate"),
            ("Hardware", "GPUs per node"),
            ("Evaluation and promotion", "Promotion metric"),
        ):
            field = dialog.get_by_text(first_title).first
            if not field.is_visible():
                dialog.get_by_text(section, exact=True).first.click()
            field.wait_for(state="visible")
        for title in (
            "Model preset",
            "Engine",
            "Dataset version",
            "Learning rate",
            "Rollouts per prompt",
            "KL coefficient",
            "Total steps",
            "Epochs",
            "GPUs per node",
            "Nodes",
            "LoRA rank",
            "Promotion metric",
            "Minimum improvement",
            "Train even if nothing changed",
        ):
            assert dialog.get_by_text(title).count() >= 1, f"form field {title!r} not shown"
        # keep the DAG paused: the run is created (queued) but starts no container in the shared services
        unpause = dialog.get_by_role("checkbox").first
        if unpause.is_checked():
            dialog.get_by_text("Unpause grounding_train on trigger").click()
        assert not unpause.is_checked()
        _shot(page, "02-trigger-form")

        # trigger a run with the defaults
        dialog.get_by_role("button", name="Trigger").last.click()
        deadline = time.time() + 60
        while time.time() < deadline:
            runs = airflow_service.api("GET", "/api/v2/dags/grounding_train/dagRuns")
            if runs["total_entries"] > runs_before:
                break
            time.sleep(1)
        else:
            raise AssertionError("clicking Trigger created no grounding_train run")
        run = max(runs["dag_runs"], key=lambda r: r["run_after"])
        assert run["run_type"] == "manual" and run["conf"].get("dataset_version", "latest") == "latest"
        _shot(page, "03-triggered")

        # the plugin's navigation entry opens "Grounding models"; the champion row is there
        page.goto(f"{airflow_service.url}/")
        page.get_by_role("link", name="Grounding models").first.click()
        frame = page.frame_locator("iframe").first
        row = frame.locator("tr.champion")
        row.wait_for()
        assert f"v{champion}" in row.inner_text() and "0.6100" in row.inner_text()
        _shot(page, "04-grounding-models")

        # the page itself, outside the iframe, for the same logged-in user
        page.goto(f"{airflow_service.url}/grounding/models")
        assert page.locator("tr.champion").count() == 1
        _shot(page, "05-grounding-models-page")
    except Exception:
        _shot(page, "99-failure")
        raise
    finally:
        context.close()


def test_models_page_requires_login(airflow_service, browser):
    context = browser.new_context()
    page = context.new_page()
    try:
        response = page.goto(f"{airflow_service.url}/grounding/models")
        assert "login" in page.url or (response is not None and response.status in (401, 403))
        assert page.locator("tr.champion").count() == 0
        _shot(page, "06-models-page-logged-out")
    finally:
        context.close()
