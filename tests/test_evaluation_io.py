"""Evaluation without a model: reading exported rows, scoring with the reward, files in S3."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grounding_ops.evaluation.evaluate import (
    EvalSample,
    EvaluationError,
    EvaluationSettings,
    build_requests,
    fetch_model,
    read_evaluation_record,
    read_samples,
    score_sample,
    write_outputs,
)
from grounding_ops.evaluation.evaluation_record import EvaluationRecord, ModelLineage
from grounding_ops.protocols import build_prompt, get_protocol


def _png(size=(64, 48)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 60, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _sample(protocol: str = "qwen2.5-vl", boxes=((8.0, 8.0, 40.0, 32.0),), source: str = "synthetic") -> EvalSample:
    return EvalSample("s1", source, "the blue square", protocol, _png(), [list(b) for b in boxes], (64, 48), (56, 56))


@pytest.mark.parametrize("protocol", ["qwen2.5-vl", "qwen2-vl", "click-xywh", "normalized-xyxy"])
def test_a_perfect_answer_scores_one(protocol: str) -> None:
    sample = _sample(protocol)
    answer = get_protocol(protocol).format_answer(sample.gt_boxes, sample.image_size, sample.resized_size, precise=True)
    prediction = score_sample(sample, answer)
    assert prediction.format_ok and prediction.iou == pytest.approx(1.0, abs=1e-4)
    assert prediction.pred_boxes[0] == pytest.approx(sample.gt_boxes[0], abs=1e-3)


def test_known_ious_and_failures() -> None:
    sample = _sample("normalized-xyxy", boxes=((0.0, 0.0, 32.0, 48.0),))
    # right half of the box: IoU 0.5
    half = score_sample(sample, "[0.25, 0, 0.5, 1]")
    assert half.iou == pytest.approx(0.5) and half.format_ok
    # the right box plus a wrong one: the extra box halves the sample IoU (no reward for spraying boxes)
    extra = score_sample(sample, "[[0, 0, 0.5, 1], [0.5, 0, 1, 1]]")
    assert extra.n_pred == 2 and extra.iou == pytest.approx(0.5) and extra.matched_iou == pytest.approx(1.0)
    garbage = score_sample(sample, "I cannot see any square here.")
    assert not garbage.format_ok and garbage.iou == 0.0 and garbage.pred_boxes == []


def _verl_row(index: int, protocol: str = "qwen2.5-vl") -> dict:
    phrase = f"the shape {index}"
    info = {
        "split": "val",
        "index": index,
        "id": f"row-{index}",
        "source": "synthetic",
        "phrase": phrase,
        "protocol": protocol,
        "image_size": [64, 48],
        "resized_size": [56, 56],
    }
    return {
        "data_source": "grounding/synthetic",
        "prompt": build_prompt(phrase, protocol),
        "images": [{"bytes": _png()}],
        "ability": "grounding",
        "reward_model": {
            "style": "rule",
            "ground_truth": {
                "boxes": [[1.0, 2.0, 30.0, 40.0]],
                "protocol": protocol,
                "image_size": [64, 48],
                "resized_size": [56, 56],
            },
        },
        "extra_info": info,
    }


def test_read_exported_rows_and_prompts(tmp_path) -> None:
    path = tmp_path / "val.parquet"
    pq.write_table(pa.Table.from_pylist([_verl_row(i) for i in range(5)]), path)
    samples = read_samples(path, max_samples=3)
    assert [s.id for s in samples] == ["row-0", "row-1", "row-2"]
    first = samples[0]
    assert (first.image_size, first.resized_size, first.protocol) == ((64, 48), (56, 56), "qwen2.5-vl")
    assert first.gt_boxes == [[1.0, 2.0, 30.0, 40.0]] and first.source == "synthetic"
    requests = build_requests(samples)
    assert requests[0].messages == build_prompt("the shape 0", "qwen2.5-vl")
    assert requests[0].resized_size == (56, 56) and requests[0].image_bytes == first.image_bytes


def test_rows_without_one_image_are_refused(tmp_path) -> None:
    row = _verl_row(0)
    row["images"] = []
    path = tmp_path / "val.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    with pytest.raises(EvaluationError, match="exactly one image"):
        read_samples(path)


def test_model_is_fetched_from_s3(s3_env, tmp_path) -> None:
    client = s3_env.client()
    for key, body in (("config.json", b"{}"), ("model.safetensors", b"weights"), ("sub/tokenizer.json", b"{}")):
        client.put_object(Bucket=s3_env.bucket, Key=f"eval-io/model/{key}", Body=body)
    local = fetch_model(s3_env.uri("eval-io", "model"), tmp_path / "m")
    assert (local / "model.safetensors").read_bytes() == b"weights" and (local / "sub" / "tokenizer.json").is_file()
    with pytest.raises(EvaluationError, match="no config.json"):
        fetch_model(s3_env.uri("eval-io", "nothing-here"), tmp_path / "n")


def test_outputs_written_to_s3(s3_env) -> None:
    samples = [_sample(source=src) for src in ("a", "a", "b")]
    answers = ['[{"bbox_2d": [7, 9, 35, 37]}]', "nonsense", '[{"bbox_2d": [0, 0, 56, 56]}]']
    predictions = [score_sample(s, a) for s, a in zip(samples, answers)]
    info = EvaluationSettings(
        model_uri="s3://x/m",
        dataset_uri="s3://x/d",
        dataset_version="v9",
        dataset_manifest_sha256="",
        split="val",
        protocol="qwen2.5-vl",
        engine="transformers",
        batch_size=8,
        max_new_tokens=64,
        max_samples=None,
        role="candidate",
        tags={},
        lineage=ModelLineage(),
    )
    output = s3_env.uri("eval-io", "out")
    result = write_outputs(output, info=info, samples=samples, predictions=predictions, seconds=1.5)
    record = read_evaluation_record(output)
    assert record.n_samples == 3 and record.samples_per_s == pytest.approx(2.0)
    assert record.flat_metrics["parse_failure_rate"] == pytest.approx(1 / 3)
    assert set(record.metrics["per_source"]) == {"a", "b"}
    assert EvaluationRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert result.metrics.per_source["a"].n == 2
    client = s3_env.client()
    page = client.get_object(Bucket=s3_env.bucket, Key="eval-io/out/report.html")["Body"].read().decode()
    # the histogram, 3 examples, and the 4 plots (IoU histogram, Acc@tau, per-source bars, examples grid)
    assert page.count("data:image/png;base64,") == 1 + 3 + 4 and "the blue square" in page
    table = pq.read_table(
        io.BytesIO(client.get_object(Bucket=s3_env.bucket, Key="eval-io/out/predictions.parquet")["Body"].read())
    )
    assert table.num_rows == 3 and table.column("response").to_pylist() == answers
    json.dumps(result.metrics.to_dict())


def test_cli_refuses_an_engine_this_environment_cannot_run(tmp_path, capsys) -> None:
    import importlib.util

    from grounding_ops.cli import main

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here: the transformers engine can run")
    code = main(["evaluate", "--model", str(tmp_path), "--dataset", str(tmp_path), "--output", str(tmp_path / "o")])
    assert code == 2
    assert "needs torch" in capsys.readouterr().err
