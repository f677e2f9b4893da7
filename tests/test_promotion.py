"""Promotion against a real MLflow server whose artifacts live in the local S3 (moto).

Evaluation outputs are built from constructed predictions with known IoUs (no model
needed), logged with the real ``log_evaluation`` and promoted with the real gate.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest

from grounding_ops.evaluation.plots import EVALUATION_PLOTS
from grounding_ops.evaluation.evaluate import training_lineage
from grounding_ops.testing import write_stand_in_evaluation
from grounding_ops.registry.models import list_model_versions
from grounding_ops.registry.promotion import PromotionError, promote
from grounding_ops.vocabulary import CHALLENGER_ALIAS as CHALLENGER, CHAMPION_ALIAS as CHAMPION
from grounding_ops.registry.tracking import log_evaluation, mlflow_client
from grounding_ops.storage import open_store
from grounding_ops.training.run_record import RunRecord

N = 200  # samples per evaluation: Acc@0.5 moves in steps of 0.005


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 180, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


@pytest.fixture()
def registry(mlflow_env, s3_service, monkeypatch, tmp_path):
    """A fresh experiment and model name on the session's MLflow server, W&B off."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    token = uuid.uuid4().hex[:8]
    return {
        "client": mlflow_client(mlflow_env.uri),
        "experiment": f"eval-{token}",
        "model": f"grounding-{token}",
        "prefix": f"test-{token}",
        "s3": s3_service,
    }


def _evaluate(
    reg, name: str, *, acc: float, dataset_version: str = "v1", role: str = "candidate", model_uri: str | None = None
) -> str:
    """Write an evaluation output with Acc@0.5 == acc to S3 and log it; return the run id."""
    output = _write(reg, name, acc=acc, dataset_version=dataset_version, role=role, model_uri=model_uri)
    return log_evaluation(output, client=reg["client"], experiment=reg["experiment"])


def _write(reg, name: str, *, acc: float, dataset_version: str, role: str, model_uri: str | None) -> str:
    s3 = reg["s3"]
    hits = round(acc * N)
    model_uri = model_uri or s3.uri(reg["prefix"], "train", name, "final")
    _put_model_folder(s3, model_uri)
    return write_stand_in_evaluation(
        s3.uri(reg["prefix"], "evaluations", f"{name}-{dataset_version}"),
        ious=[0.8 if i < hits else 0.2 for i in range(N)],
        model_uri=model_uri,
        dataset_uri=s3.uri(reg["prefix"], "datasets", dataset_version),
        dataset_version=dataset_version,
        role=role,
        lineage=training_lineage(model_uri),
    )


def _put_model_folder(s3, model_uri: str) -> None:
    """A stand-in Hugging Face folder at ``model_uri`` (promotion logs it as an MLflow model)."""
    key = model_uri.removeprefix(f"s3://{s3.bucket}/").rstrip("/") + "/config.json"
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=b'{"model_type": "qwen2_5_vl"}')


def _aliases(reg) -> dict[str, str]:
    return dict(reg["client"].get_registered_model(reg["model"]).aliases)


def _versions(reg) -> list:
    return list(reg["client"].search_model_versions(f"name = '{reg['model']}'"))


def _promote(reg, run_id: str, **kwargs):
    return promote(run_id, model_name=reg["model"], client=reg["client"], **kwargs)


def test_better_candidate_becomes_champion_worse_or_equal_does_not(registry):
    _evaluate(registry, "base", acc=0.20, role="base", model_uri=registry["s3"].uri("base-models", "tiny"))
    first = _promote(registry, _evaluate(registry, "c1", acc=0.50))
    assert first.promoted and first.baseline == "base"
    assert (first.candidate_value, first.baseline_value) == pytest.approx((0.50, 0.20))
    assert _aliases(registry) == {CHAMPION: first.version, CHALLENGER: first.version}

    # paired on the same 200 samples: 3 more right answers (0.515) is inside the noise, 20 more is not
    for name, acc in (("worse", 0.40), ("equal", 0.50), ("too-small", 0.515)):
        decision = _promote(registry, _evaluate(registry, name, acc=acc))
        assert not decision.promoted, decision
        assert decision.baseline == "champion" and decision.baseline_value == pytest.approx(0.50)
        assert decision.candidate_value == pytest.approx(acc)
        assert decision.champion_after == first.version
        assert _aliases(registry) == {CHAMPION: first.version, CHALLENGER: decision.version}
        assert "min_delta" in decision.reason or "tie" in decision.reason, decision.reason
        assert f"{acc:.4f} vs champion v{first.version} 0.5000" in decision.summary() and "n=200" in decision.summary()

    better = _promote(registry, _evaluate(registry, "better", acc=0.60))
    assert better.promoted and better.champion_before == first.version
    assert better.baseline_value == pytest.approx(0.50)
    assert _aliases(registry) == {CHAMPION: better.version, CHALLENGER: better.version}
    assert len(_versions(registry)) == 5
    # the decision is also stored on the evaluation run
    tags = registry["client"].get_run(better.candidate_run_id).data.tags
    assert tags["grounding.promotion.promoted"] == "true"
    assert float(tags["grounding.promotion.baseline_value"]) == pytest.approx(0.50)


def test_rerun_is_a_no_op(registry):
    _evaluate(registry, "base", acc=0.1, role="base", model_uri=registry["s3"].uri("base-models", "tiny"))
    output = _write(registry, "cand", acc=0.6, dataset_version="v1", role="candidate", model_uri=None)
    run_id = log_evaluation(output, client=registry["client"], experiment=registry["experiment"])
    # logging the same output twice gives one run
    assert log_evaluation(output, client=registry["client"], experiment=registry["experiment"]) == run_id
    first = _promote(registry, run_id)
    # a later challenger must not be moved back by re-promoting the first candidate
    loser = _promote(registry, _evaluate(registry, "loser", acc=0.2))
    aliases = _aliases(registry)
    versions = [(v.version, dict(v.tags)) for v in _versions(registry)]

    again = _promote(registry, run_id)
    assert again.promoted == first.promoted is True
    assert again.version == first.version and not again.changed and not again.created_version
    assert (again.candidate_value, again.baseline_value) == (first.candidate_value, first.baseline_value)
    assert _aliases(registry) == aliases == {CHAMPION: first.version, CHALLENGER: loser.version}
    assert [(v.version, dict(v.tags)) for v in _versions(registry)] == versions
    assert not _promote(registry, loser.candidate_run_id).changed


def test_first_champion_must_beat_the_base_model(registry):
    candidate = _evaluate(registry, "cand", acc=0.30)
    refused = _promote(registry, candidate)
    assert not refused.promoted and refused.baseline == "none"
    assert "base-model evaluation" in refused.reason and "--role base" in refused.reason
    assert _aliases(registry) == {CHALLENGER: refused.version}

    # a base evaluation on ANOTHER dataset version does not count
    _evaluate(
        registry,
        "base",
        acc=0.10,
        role="base",
        dataset_version="v0",
        model_uri=registry["s3"].uri("base-models", "tiny"),
    )
    assert _promote(registry, candidate).baseline == "none"

    _evaluate(registry, "base", acc=0.30, role="base", model_uri=registry["s3"].uri("base-models", "tiny"))
    equal = _promote(registry, candidate)  # the refusal was not recorded: decided afresh now
    assert not equal.promoted and equal.baseline == "base"
    assert (equal.candidate_value, equal.baseline_value) == pytest.approx((0.30, 0.30))
    assert CHAMPION not in _aliases(registry)
    assert len(_versions(registry)) == 1  # still the one version

    better = _promote(registry, _evaluate(registry, "cand2", acc=0.40))
    assert better.promoted and better.baseline == "base"
    assert _aliases(registry)[CHAMPION] == better.version


def test_champion_from_another_dataset_version(registry):
    s3 = registry["s3"]
    _evaluate(registry, "base", acc=0.1, role="base", model_uri=s3.uri("base-models", "tiny"))
    champion = _promote(registry, _evaluate(registry, "champ", acc=0.5))
    assert champion.promoted

    candidate = _evaluate(registry, "new", acc=0.50, dataset_version="v2")
    refused = _promote(registry, candidate)
    assert not refused.promoted and refused.baseline == "none"
    assert "evaluated on dataset v1" in refused.reason and "v2" in refused.reason
    assert _aliases(registry)[CHAMPION] == champion.version

    # evaluate the champion's model on v2: the gate now compares on v2
    champion_model = (
        registry["client"].get_model_version(registry["model"], champion.version).tags["grounding.model_uri"]
    )
    bar = _evaluate(registry, "champ", acc=0.40, dataset_version="v2", model_uri=champion_model)
    decision = _promote(registry, candidate)
    assert decision.promoted and decision.baseline_run_id == bar
    assert (decision.candidate_value, decision.baseline_value) == pytest.approx((0.50, 0.40))
    assert f"re-evaluated in run {bar}" in decision.reason and decision.dataset_version == "v2"

    # the old champion's v2 evaluation reuses its version (same weights): no third version
    old = _promote(registry, bar)
    assert old.version == champion.version and not old.created_version and not old.promoted
    assert (old.candidate_value, old.baseline_value) == pytest.approx((0.40, 0.50))
    assert len(_versions(registry)) == 2


def test_lineage_tags_source_and_artifacts_in_s3(registry):
    s3 = registry["s3"]
    client = s3.client()
    train_prefix = f"{registry['prefix']}/train/lineage"
    run_json = RunRecord(
        dataset_version="v1",
        dataset_uri=s3.uri(registry["prefix"], "datasets", "v1"),
        spec={"model": s3.uri("base-models", "tiny")},
        engine="cpu",
        image="sha256:" + "ab" * 32,
        git_commit="0123456789abcdef",
        steps_done=4,
        steps_trained=4,
        target_steps=4,
        final_uri=s3.uri(train_prefix, "final"),
        wandb_url="https://wandb.ai/team/grounding/runs/xyz",
    )
    run_json.save(open_store(s3.uri(train_prefix)))
    model_uri = s3.uri(train_prefix, "final")
    _evaluate(registry, "base", acc=0.1, role="base", model_uri=s3.uri("base-models", "tiny"))
    run_id = _evaluate(registry, "lineage", acc=0.7, model_uri=model_uri)
    decision = _promote(registry, run_id)

    version = registry["client"].get_model_version(registry["model"], decision.version)
    assert version.run_id == run_id and version.tags["grounding.model_uri"] == model_uri
    # the version is a logged MLflow model (MLmodel, signature, the Hugging Face folder), not the raw folder
    model_id = version.tags["grounding.logged_model_id"]
    assert version.source == f"models:/{model_id}"
    logged = registry["client"].get_logged_model(model_id)
    assert logged.status == "READY" and logged.tags["grounding.model_uri"] == model_uri
    tags = version.tags
    assert tags["grounding.dataset_version"] == "v1"
    assert tags["grounding.dataset_uri"] == s3.uri(registry["prefix"], "datasets", "v1")
    assert tags["grounding.training_output_uri"] == s3.uri(train_prefix)
    assert tags["grounding.image_digest"] == run_json.image
    assert tags["grounding.git_commit"] == run_json.git_commit
    assert tags["grounding.wandb_run"] == run_json.wandb_url
    assert tags["grounding.evaluation_run_id"] == run_id
    assert float(tags["grounding.metric.acc_at_0_5"]) == pytest.approx(0.7)

    run = registry["client"].get_run(run_id)
    assert run.data.params["model_uri"] == model_uri and run.data.params["protocol"] == "qwen2.5-vl"
    assert run.data.metrics["acc_at_0_5"] == pytest.approx(0.7)
    assert run.data.metrics["acc_at_0_5_ci_low"] <= 0.7 <= run.data.metrics["acc_at_0_5_ci_high"]
    assert run.data.metrics["source/synthetic/acc_at_0_5"] == pytest.approx(0.7)
    keys = [o.key for o in open_store(s3.uri("mlflow"), s3_client=client).list("")]
    for name in ("metrics.json", "predictions.parquet", "report.html", *(f"plots/{p}" for p in EVALUATION_PLOTS)):
        assert any(k.endswith(f"{run_id}/artifacts/{name}") for k in keys), (name, keys[:20])


def test_model_listing_is_paginated_with_metrics_and_aliases(registry):
    _evaluate(registry, "base", acc=0.1, role="base", model_uri=registry["s3"].uri("base-models", "tiny"))
    decisions = [_promote(registry, _evaluate(registry, f"m{i}", acc=acc)) for i, acc in enumerate((0.3, 0.6, 0.4))]
    page = list_model_versions(registry["model"], page_size=2, client=registry["client"])
    assert [r.version for r in page.rows] == ["3", "2"] and page.next_page_token
    assert page.champion == decisions[1].version == "2"
    champion_row = page.rows[1]
    assert champion_row.is_champion and champion_row.aliases == [CHAMPION]
    assert champion_row.metrics["acc_at_0_5"] == pytest.approx(0.6)
    assert champion_row.dataset_version == "v1" and champion_row.mlflow_url.endswith("/versions/2")
    assert page.rows[0].aliases == [CHALLENGER]
    rest = list_model_versions(
        registry["model"], page_size=2, page_token=page.next_page_token, client=registry["client"]
    )
    assert [r.version for r in rest.rows] == ["1"] and rest.next_page_token is None
    json.dumps(rest.to_dict())
    assert list_model_versions("no-such-model", client=registry["client"]).rows == []


def test_errors_name_what_to_fix(registry):
    with pytest.raises(PromotionError, match="no MLflow run"):
        _promote(registry, "0" * 32)
    run_id = _evaluate(registry, "cand", acc=0.3)
    with pytest.raises(PromotionError, match="no metric 'nope'.*acc_at_0_5"):
        _promote(registry, run_id, metric="nope")
    base = _evaluate(registry, "base", acc=0.1, role="base", model_uri=registry["s3"].uri("base-models", "tiny"))
    with pytest.raises(PromotionError, match="base model"):
        _promote(registry, base)


def test_cli_prints_the_decision_and_exit_codes(registry, capsys):
    from grounding_ops.cli import main

    _evaluate(registry, "base", acc=0.2, role="base", model_uri=registry["s3"].uri("base-models", "tiny"))
    run_id = _evaluate(registry, "cand", acc=0.2)
    assert main(["promote", "--candidate", run_id, "--model-name", registry["model"]]) == 0
    out = capsys.readouterr().out
    assert "NOT PROMOTED" in out and "acc_at_0_5 0.2000 vs base 0.2000" in out and "tie" in out
    better = _evaluate(registry, "better", acc=0.6)
    assert (
        main(
            [
                "promote",
                "--candidate",
                better,
                "--model-name",
                registry["model"],
                "--min-samples",
                "500",
                "--confidence",
                "0.9",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "NOT PROMOTED" in out and "only 200 paired test samples, fewer than the minimum 500" in out
    assert "90% CI" in out
    with pytest.raises(SystemExit) as refused:
        main(["promote", "--candidate", better, "--model-name", registry["model"], "--confidence", "1.5"])
    assert refused.value.code == 2 and "--confidence: 1.5 must be >= 0.5" in capsys.readouterr().err
    assert main(["promote", "--candidate", "f" * 32, "--model-name", registry["model"]]) == 2


def test_wandb_offline_run_folder_without_key(registry, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_id = _evaluate(registry, "wandb", acc=0.25)
    reference = registry["client"].get_run(run_id).data.tags["grounding.wandb_eval_run"]
    assert reference.startswith("offline:")
    assert list(Path(tmp_path, "wandb").glob("offline-run-*")), "no offline W&B run folder"
    # the drawn examples as a predictions table whose images carry the true and predicted boxes
    (table_file,) = Path(tmp_path, "wandb").glob("offline-run-*/files/media/table/predictions*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["id", "image", "phrase", "iou", "response"] and len(table["data"]) == 8


def test_wandb_predictions_table_draws_true_and_predicted_boxes():
    import wandb

    from grounding_ops.tracking_wandb import predictions_table

    row = {
        "id": "s1",
        "image_bytes": PNG,
        "phrase": "the red circle",
        "iou": 0.5,
        "response": "[...]",
        "gt_boxes": [[4.0, 4.0, 20.0, 20.0]],
        "pred_boxes": [[2.0, 3.0, 18.0, 22.0], [0.0, 0.0, 5.0, 5.0]],
    }
    table = predictions_table(wandb, [row])
    (image,) = table.get_column("image")
    boxes = {key: value._val for key, value in image._boxes.items()}
    assert [b["position"] for b in boxes["ground_truth"]] == [{"minX": 4.0, "minY": 4.0, "maxX": 20.0, "maxY": 20.0}]
    assert [b["position"]["maxY"] for b in boxes["predictions"]] == [22.0, 5.0]
    assert all(b["domain"] == "pixel" for b in boxes["predictions"])
    assert table.get_column("iou") == [0.5]


def test_base_gate_prefers_the_model_the_candidate_was_trained_from(registry):
    s3 = registry["s3"]
    base_a, base_b = s3.uri("base-models", "a"), s3.uri("base-models", "b")
    train_prefix = f"{registry['prefix']}/train/from-a"
    RunRecord(
        dataset_version="v1",
        dataset_uri=s3.uri(registry["prefix"], "datasets", "v1"),
        spec={"model": base_a},
        engine="cpu",
        steps_done=2,
        steps_trained=2,
        target_steps=2,
        final_uri=s3.uri(train_prefix, "final"),
    ).save(open_store(s3.uri(train_prefix)))
    _evaluate(registry, "base-a", acc=0.10, role="base", model_uri=base_a)
    _evaluate(registry, "base-b", acc=0.50, role="base", model_uri=base_b)  # logged later, not our base
    decision = _promote(registry, _evaluate(registry, "cand", acc=0.30, model_uri=s3.uri(train_prefix, "final")))
    assert decision.promoted and decision.baseline_value == pytest.approx(0.10)
    assert base_a in decision.reason
