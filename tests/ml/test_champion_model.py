"""The champion as people use it: a real CPU training logged to MLflow, evaluated, promoted, then
loaded from ``models:/<name>@champion`` with ``mlflow.pyfunc`` and served with ``mlflow models serve``.

Real services: the local S3 (moto server) and an MLflow server whose artifacts live in it. The
model is the tiny Qwen2-VL of the ``tiny-cpu`` preset, trained a few steps by the CPU engine.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from grounding_ops.data.synthetic import publish_synthetic_version
from grounding_ops.evaluation.plots import EVALUATION_PLOTS, TRAINING_CURVES
from grounding_ops.storage import open_store

pytestmark = [pytest.mark.ml, pytest.mark.slow]

MAX_NEW_TOKENS = 40


def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).ellipse([width // 4, height // 4, width // 2, height // 2], fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def champion(tmp_path_factory, s3_service, mlflow_service):
    """Train (run_training, CPU engine), log the training, evaluate base and final, promote."""
    from grounding_ops.evaluation.evaluate import evaluate
    from grounding_ops.registry.promotion import promote
    from grounding_ops.vocabulary import CHAMPION_ALIAS as CHAMPION
    from grounding_ops.registry.tracking import log_evaluation, mlflow_client
    from grounding_ops.registry.training_run import log_training_run
    from grounding_ops.training.presets import get_preset
    from grounding_ops.training.runner import run_training

    saved = dict(os.environ)
    os.environ.update(mlflow_service.env)
    os.environ["WANDB_MODE"] = "disabled"
    started_ms = int(time.time() * 1000)
    try:
        token = uuid.uuid4().hex[:8]
        s3 = s3_service.client()
        base = tmp_path_factory.mktemp("champion")
        dataset_uri, _ = publish_synthetic_version(
            base,
            version="v-champion",
            n_images=16,
            seed=3,
            val_fraction=0.25,
            store_uri=s3_service.uri(f"test-{token}", "datasets", "shapes"),
            s3_client=s3,
        )
        spec = get_preset("tiny-cpu").with_overrides(["total_steps=2", "save_freq=2", "sft_warmup_steps=300"])
        output = s3_service.uri(f"test-{token}", "runs", "train")
        run_training(spec, dataset_uri=dataset_uri, output_uri=output, engine="cpu", s3_client=s3)

        client = mlflow_client(mlflow_service.uri)
        experiment = f"eval-{token}"
        training_run = log_training_run(output, client=client, airflow_run=f"grounding_train/{token}", s3_client=s3)
        evaluations = {}
        for role, model_uri in (("base", f"{output}/base"), ("candidate", f"{output}/final")):
            eval_uri = s3_service.uri(f"test-{token}", "runs", "eval", role)
            evaluate(
                model_uri,
                dataset_uri,
                split="val",
                engine="transformers",
                batch_size=4,
                output_uri=eval_uri,
                role=role,
                max_new_tokens=MAX_NEW_TOKENS,
                s3_client=s3,
                tags={"grounding.airflow_run": f"grounding_train/{token}"},
            )
            evaluations[role] = (eval_uri, log_evaluation(eval_uri, client=client, experiment=experiment, s3_client=s3))
        name = f"grounding-{token}"
        decision = promote(
            evaluations["candidate"][1], model_name=name, client=client, min_delta=0.0, metric="mean_iou"
        )
        # Registration (the pyfunc model) happens whatever the gate decides; the gate's statistics are
        # tested in tests/test_gate.py. A 2-step model on a handful of samples rarely clears it, so the
        # registered version is made champion here the way an operator would, to test what people load.
        if not decision.promoted:
            client.set_registered_model_alias(name, CHAMPION, decision.version)
        assert client.get_registered_model(name).aliases[CHAMPION] == decision.version
        yield {
            "name": name,
            "client": client,
            "training_run": training_run,
            "evaluations": evaluations,
            "version": decision.version,
            "output": output,
            "dataset_uri": dataset_uri,
            "s3": s3,
            "window": (started_ms, None),
            "env": dict(os.environ),
        }
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _val_images(champion) -> list[tuple[bytes, str]]:
    import pyarrow.parquet as pq

    from grounding_ops.evaluation.evaluate import fetch_dataset

    work = Path(champion["env"].get("TMPDIR", "/tmp")) / f"val-{uuid.uuid4().hex[:6]}"
    _, path = fetch_dataset(champion["dataset_uri"], work, "val", s3_client=champion["s3"])
    rows = pq.read_table(path).to_pylist()
    return [(r["images"][0]["bytes"], r["extra_info"]["phrase"]) for r in rows]


def test_champion_loads_from_the_registry_and_answers_like_the_evaluation(champion, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd
    import pyarrow.parquet as pq
    from PIL import Image

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)  # only MLflow access: the artifacts come through the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["env"]["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model(f"models:/{champion['name']}@champion")
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == ["image", "phrase"]
    assert model.metadata.get_output_schema().input_names() == ["boxes", "response", "format_ok"]

    # the same images as the evaluation: the same answers (prompt, resize, generation and parsing reused)
    val = _val_images(champion)[:2]
    frame = pd.DataFrame({"image": [v[0] for v in val], "phrase": [v[1] for v in val]})
    answers = model.predict(frame)
    store = open_store(champion["evaluations"]["candidate"][0], s3_client=champion["s3"])
    local = Path(champion["env"].get("TMPDIR", "/tmp")) / f"pred-{uuid.uuid4().hex[:6]}.parquet"
    store.download_file("predictions.parquet", local)
    evaluated = pq.read_table(local).to_pylist()[:2]
    assert list(answers["response"]) == [p["response"] for p in evaluated]
    for got, want in zip(answers["boxes"], evaluated):
        assert len(got) == len(want["pred_boxes"])
        for box, expected in zip(got, want["pred_boxes"]):
            assert list(box) == pytest.approx(expected)

    # two images of other sizes: boxes in pixels of each image
    images = [_png(96, 64, (220, 30, 30)), _png(50, 90, (30, 30, 220))]
    answers = model.predict(pd.DataFrame({"image": images, "phrase": ["the red circle", "the blue circle"]}))
    assert len(answers) == 2 and set(answers.columns) == {"boxes", "response", "format_ok"}
    found = 0
    for data, boxes in zip(images, answers["boxes"]):
        width, height = Image.open(io.BytesIO(data)).size
        for x1, y1, x2, y2 in boxes:
            found += 1
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
    assert found >= 1, list(answers["response"])  # the warmed-up model answers in the protocol

    # grounding-ops predict: prints the boxes and draws them
    out = local.with_suffix(".png")
    image_file = local.with_name("ask.png")
    image_file.write_bytes(images[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grounding_ops",
            "predict",
            "--model",
            f"models:/{champion['name']}@champion",
            "--image",
            str(image_file),
            "--phrase",
            "the red circle",
            "--save",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout[result.stdout.index("{") :])
    assert printed["boxes"] == [list(b) for b in answers["boxes"][0]]
    assert Image.open(out).size == (96, 64)


def test_champion_is_served_over_http(champion, tmp_path):
    from grounding_ops.services import free_port

    port = free_port()
    # the trainer environment's executables first (`serve` runs uvicorn from it)
    env = {
        **champion["env"],
        "PYTHONPATH": os.pathsep.join(sys.path),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        env.pop(key, None)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{champion['name']}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)
        body = {
            "dataframe_split": {
                "columns": ["image", "phrase"],
                "data": [[base64.b64encode(_png(96, 64, (220, 30, 30))).decode(), "the red circle"]],
            }
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        (row,) = answer["predictions"]
        assert set(row) == {"boxes", "response", "format_ok"}
        for x1, y1, x2, y2 in row["boxes"]:
            assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 64
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_training_run_has_step_history_dataset_and_version_link(champion):
    client = champion["client"]
    run = client.get_run(champion["training_run"])
    started_ms = champion["window"][0]
    now_ms = int(time.time() * 1000)
    assert run.info.status == "FINISHED"
    assert run.data.params["spec.total_steps"] == "2" and run.data.params["engine"] == "cpu"
    for key in ("reward_mean", "iou", "acc", "seconds_per_step", "response_length", "tokens_per_s"):  # kl_coef=0
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], (key, history)
        assert all(started_ms <= m.timestamp <= now_ms for m in history), (key, history)
    assert run.data.tags["grounding.dataset_version"] == "v-champion"
    assert "grounding.image_digest" not in run.data.tags or run.data.tags["grounding.image_digest"]
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == "v-champion"
    assert json.loads(dataset.dataset.source)["uri"] == champion["dataset_uri"].rstrip("/")
    assert any(a.path == f"plots/{TRAINING_CURVES}" for a in client.list_artifacts(run.info.run_id, "plots"))

    version = client.get_model_version(champion["name"], champion["version"])
    assert version.tags["grounding.training_mlflow_run_id"] == run.info.run_id
    logged = client.get_logged_model(version.tags["grounding.logged_model_id"])
    assert logged.source_run_id == run.info.run_id

    # the evaluations of the DAG run are nested under one parent run; their metrics have real timestamps
    parents = set()
    for _, eval_run_id in champion["evaluations"].values():
        evaluation = client.get_run(eval_run_id)
        parents.add(evaluation.data.tags["mlflow.parentRunId"])
        (metric,) = client.get_metric_history(eval_run_id, "mean_iou")
        assert started_ms <= metric.timestamp <= now_ms
    assert len(parents) == 1
    assert client.get_run(parents.pop()).data.tags["grounding.kind"] == "dag-run"


def test_evaluation_report_and_run_carry_the_four_plots(champion, tmp_path):
    from PIL import Image

    client = champion["client"]
    eval_uri, eval_run_id = champion["evaluations"]["candidate"]
    logged = {a.path for a in client.list_artifacts(eval_run_id, "plots")}
    assert logged == {f"plots/{name}" for name in EVALUATION_PLOTS}
    for name in EVALUATION_PLOTS:
        path = client.download_artifacts(eval_run_id, f"plots/{name}", str(tmp_path))
        width, height = Image.open(path).size
        assert width >= 300 and height >= 200, (name, width, height)
    page = open_store(eval_uri, s3_client=champion["s3"]).get_bytes("report.html").decode()
    section = page[page.index("<h2>Plots</h2>") :]
    for name in EVALUATION_PLOTS:
        assert f'alt="{name}"' in section
    embedded = [base64.b64decode(chunk.split('"', 1)[0]) for chunk in section.split("data:image/png;base64,")[1:]]
    assert len(embedded) == 4
    assert all(Image.open(io.BytesIO(data)).size[0] >= 300 for data in embedded)
