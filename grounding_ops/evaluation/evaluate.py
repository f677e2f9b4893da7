"""Evaluate a checkpoint on a dataset version: generate, score with the reward, write files.

The evaluation writes files only (``predictions.parquet``, ``metrics.json``,
``report.html`` under the output URI), so it runs in the trainer images that have
no MLflow; :func:`grounding_ops.registry.tracking.log_evaluation` turns an output
folder into an MLflow run from the platform side.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from grounding_ops import __version__
from grounding_ops.evaluation.evaluation_record import EvaluationRecord, ModelLineage
from grounding_ops.evaluation.metrics import MetricsReport, compute_metrics
from grounding_ops.records import RecordError
from grounding_ops.storage import StorageError, download_tree, open_store
from grounding_ops.training.run_record import RunRecord
from grounding_ops.vocabulary import EVALUATION_RECORD_FILE

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = EVALUATION_RECORD_FILE
REPORT_FILE = "report.html"
OUTPUT_FILES = (PREDICTIONS_FILE, METRICS_FILE, REPORT_FILE)
PLOTS_PREFIX = "plots"  # the report's figures as PNG files (plots/<name>.png)
EXAMPLES_FILE = "examples.parquet"  # the report's examples with their images (for W&B tables)
ROLES = ("candidate", "base", "champion")
REPORT_EXAMPLES = 8


class EvaluationError(RuntimeError):
    """The evaluation cannot run as asked; the message says what to fix."""


@dataclass(frozen=True)
class EvalSample:
    """One question of the split, as exported by the data pipeline."""

    id: str
    source: str
    phrase: str
    protocol: str
    image_bytes: bytes
    gt_boxes: list[list[float]]
    image_size: tuple[int, int]
    resized_size: tuple[int, int] | None
    stored_prompt: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Prediction:
    """One scored answer (a row of ``predictions.parquet``)."""

    id: str
    source: str
    phrase: str
    response: str
    pred_boxes: list[list[float]]
    gt_boxes: list[list[float]]
    iou: float
    matched_iou: float
    score: float
    format_ok: bool
    reason: str
    n_pred: int
    n_gt: int


@dataclass(frozen=True)
class EvaluationSettings:
    """What was evaluated, on what and how: the record's inputs, fixed before generating."""

    model_uri: str
    dataset_uri: str
    dataset_version: str
    dataset_manifest_sha256: str
    split: str
    protocol: str
    engine: str
    batch_size: int
    max_new_tokens: int
    max_samples: int | None
    role: str
    tags: Mapping[str, str]
    lineage: ModelLineage


@dataclass(frozen=True)
class EvaluationResult:
    """What an evaluation produced; ``files`` maps file names to their URIs."""

    output_uri: str
    model_uri: str
    dataset_uri: str
    dataset_version: str
    split: str
    protocol: str
    engine: str
    n_samples: int
    samples_per_s: float
    metrics: MetricsReport
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        o = self.metrics.overall
        return (
            f"{self.n_samples} samples of {self.dataset_version}/{self.split}: "
            f"Acc@0.5 {o.acc_at_0_5.value:.3f} [{o.acc_at_0_5.ci_low:.3f}, {o.acc_at_0_5.ci_high:.3f}], "
            f"Acc@0.75 {o.acc_at_0_75.value:.3f}, mean IoU {o.mean_iou.value:.3f}, "
            f"parse failures {o.parse_failure_rate.value:.1%}, {self.samples_per_s:.2f} samples/s ({self.engine})"
        )


# -- inputs -------------------------------------------------------------------------------


def _split_path(paths: Any, split: str) -> Path:
    """The local parquet of ``split`` from what ``load_verified_dataset`` returned."""
    wanted = {split, f"{split}.parquet"}
    if isinstance(paths, Mapping):
        for key, value in paths.items():
            if str(key) in wanted:
                return Path(value)
        candidates = list(paths.values())
    else:
        candidates = list(paths) if isinstance(paths, (list, tuple)) else [paths]
    for value in candidates:
        path = Path(value)
        if path.is_dir() and (path / f"{split}.parquet").is_file():
            return path / f"{split}.parquet"
        if path.name == f"{split}.parquet":
            return path
    raise EvaluationError(f"the dataset has no '{split}' split ({split}.parquet); pick another --split")


def fetch_dataset(
    dataset_uri: str, dest_dir: Path, split: str, *, s3_client: Any | None = None
) -> tuple[dict[str, Any], Path]:
    """Download the split of a dataset version, verified against its manifest.

    Returns the manifest and the local parquet of ``split``.
    """
    from grounding_ops.data.manifest import DatasetVerificationError, load_verified_dataset

    try:
        manifest, paths = load_verified_dataset(dataset_uri, dest_dir, s3_client=s3_client, files=(f"{split}.parquet",))
    except DatasetVerificationError as exc:
        raise EvaluationError(str(exc)) from exc
    return _as_dict(manifest), _split_path(paths, split)


def _as_dict(manifest: Any) -> dict[str, Any]:
    if isinstance(manifest, Mapping):
        return dict(manifest)
    if hasattr(manifest, "to_dict"):
        return dict(manifest.to_dict())
    import dataclasses

    if dataclasses.is_dataclass(manifest):
        return dataclasses.asdict(manifest)
    raise EvaluationError(f"unexpected dataset manifest type {type(manifest).__name__}")


def fetch_model(model_uri: str, dest_dir: Path, *, s3_client: Any | None = None) -> Path:
    """A local folder holding the Hugging Face checkpoint at ``model_uri``.

    Local folders are used in place; ``s3://`` prefixes are downloaded to ``dest_dir``.
    """
    text = str(model_uri)
    if not text.startswith("s3://"):
        path = Path(text.removeprefix("file://")).expanduser()
        if not (path / "config.json").is_file():
            raise EvaluationError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path
    store = open_store(text, s3_client=s3_client)
    objects = list(store.list(""))
    if not any(o.key == "config.json" for o in objects):
        raise EvaluationError(f"{text} holds no config.json: point --model at a Hugging Face model folder")
    download_tree(store, dest_dir)
    return dest_dir


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    items = list(value)
    if len(items) != 2:
        return None
    return int(items[0]), int(items[1])


def read_samples(parquet_path: Path, max_samples: int | None = None) -> list[EvalSample]:
    """The rows of an exported split (VeRL RLHFDataset schema) as :class:`EvalSample`."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet_path)
    if max_samples is not None:
        table = table.slice(0, max_samples)
    samples = []
    for index, row in enumerate(table.to_pylist()):
        extra = row.get("extra_info") or {}
        truth = (row.get("reward_model") or {}).get("ground_truth") or {}
        images = row.get("images") or []
        if len(images) != 1 or not (images[0] or {}).get("bytes"):
            raise EvaluationError(
                f"{parquet_path.name} row {index}: expected exactly one image with bytes, found {len(images)}"
            )
        protocol = truth.get("protocol") or extra.get("protocol")
        image_size = _pair(truth.get("image_size") or extra.get("image_size"))
        if not protocol or image_size is None:
            raise EvaluationError(f"{parquet_path.name} row {index}: missing protocol or image_size")
        source = extra.get("source") or str(row.get("data_source", "unknown")).removeprefix("grounding/")
        samples.append(
            EvalSample(
                id=str(extra.get("id", index)),
                source=str(source),
                phrase=str(extra.get("phrase", "")),
                protocol=str(protocol),
                image_bytes=images[0]["bytes"],
                gt_boxes=[[float(v) for v in box] for box in truth.get("boxes") or []],
                image_size=image_size,
                resized_size=_pair(truth.get("resized_size") or extra.get("resized_size")),
                stored_prompt=row.get("prompt"),
            )
        )
    return samples


def build_requests(samples: Sequence[EvalSample]) -> list[Any]:
    """Generation requests built with the same prompt function as the training export."""
    from grounding_ops.evaluation.generate import GenerationRequest
    from grounding_ops.protocols import build_prompt

    requests = []
    mismatched = 0
    for sample in samples:
        messages = build_prompt(sample.phrase, sample.protocol)
        if sample.stored_prompt is not None and _plain_messages(sample.stored_prompt) != messages:
            mismatched += 1
        requests.append(GenerationRequest(sample.id, messages, sample.image_bytes, sample.resized_size))
    if mismatched:
        log.warning(
            "%d of %d exported prompts differ from build_prompt(): the dataset was exported by another "
            "version of the protocols; evaluating with the current prompts",
            mismatched,
            len(samples),
        )
    return requests


def _plain_messages(messages: Any) -> list[dict[str, Any]]:
    return [{"role": m.get("role"), "content": m.get("content")} for m in list(messages)]


# -- scoring ------------------------------------------------------------------------------


def score_sample(sample: EvalSample, response: str) -> Prediction:
    """Score ``response`` with the reward's own parser, matching and score.

    The per-sample ``iou`` behind Acc@τ and mean IoU is the one-to-one matched IoU sum
    divided by ``max(n_pred, n_gt)`` (plain IoU for one box against one box; extra or
    missing boxes pull it down, so listing many boxes does not pay). ``matched_iou`` is
    the reward's mean IoU over matched pairs.
    """
    from grounding_ops.protocols import get_protocol
    from grounding_ops.reward import score_response
    from grounding_ops.reward.matching import match_boxes

    result = score_response(
        response,
        sample.gt_boxes,
        image_size=sample.image_size,
        protocol=sample.protocol,
        resized_size=sample.resized_size,
    )
    parsed = get_protocol(sample.protocol).parse(response, sample.image_size, sample.resized_size)
    n_pred, n_gt = len(parsed.boxes), len(sample.gt_boxes)
    if parsed.too_many:
        iou = 0.0
    elif n_gt == 0:
        iou = 1.0 if (n_pred == 0 and parsed.format_ok) else 0.0
    else:
        match = match_boxes(parsed.boxes, sample.gt_boxes)
        iou = match.total_iou / max(n_pred, n_gt)
    return Prediction(
        id=sample.id,
        source=sample.source,
        phrase=sample.phrase,
        response=response,
        pred_boxes=[[float(v) for v in box] for box in parsed.boxes],
        gt_boxes=sample.gt_boxes,
        iou=float(min(max(iou, 0.0), 1.0)),
        matched_iou=float(result.get("iou", 0.0)),
        score=float(result["score"]),
        format_ok=bool(result["format_ok"]),
        reason=str(result.get("reason", "")),
        n_pred=n_pred,
        n_gt=n_gt,
    )


# -- outputs ------------------------------------------------------------------------------


def predictions_table(predictions: Sequence[Prediction]) -> Any:
    import pyarrow as pa

    boxes = pa.list_(pa.list_(pa.float64()))
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("phrase", pa.string()),
            ("response", pa.string()),
            ("pred_boxes", boxes),
            ("gt_boxes", boxes),
            ("iou", pa.float64()),
            ("matched_iou", pa.float64()),
            ("score", pa.float64()),
            ("format_ok", pa.bool_()),
            ("reason", pa.string()),
            ("n_pred", pa.int32()),
            ("n_gt", pa.int32()),
        ]
    )
    return pa.Table.from_pylist([asdict(p) for p in predictions], schema=schema)


def examples_table(examples: Sequence[Any]) -> Any:
    """The report's examples (image bytes, true and predicted boxes) as an Arrow table."""
    import pyarrow as pa

    boxes = pa.list_(pa.list_(pa.float64()))
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("phrase", pa.string()),
            ("image_bytes", pa.binary()),
            ("gt_boxes", boxes),
            ("pred_boxes", boxes),
            ("iou", pa.float64()),
            ("response", pa.string()),
        ]
    )
    rows = [{name: getattr(e, name) for name in schema.names} for e in examples]
    for row in rows:
        row["gt_boxes"] = [[float(v) for v in b] for b in row["gt_boxes"]]
        row["pred_boxes"] = [[float(v) for v in b] for b in row["pred_boxes"]]
    return pa.Table.from_pylist(rows, schema=schema)


def _report_examples(samples: Sequence[EvalSample], predictions: Sequence[Prediction]) -> list[Any]:
    """A few examples spread over the IoU range (best, worst and in between)."""
    from grounding_ops.evaluation.report import ReportExample

    order = sorted(range(len(predictions)), key=lambda i: predictions[i].iou)
    if len(order) > REPORT_EXAMPLES:
        step = (len(order) - 1) / (REPORT_EXAMPLES - 1)
        order = sorted({order[round(k * step)] for k in range(REPORT_EXAMPLES)}, key=lambda i: predictions[i].iou)
    return [
        ReportExample(
            id=predictions[i].id,
            source=predictions[i].source,
            phrase=predictions[i].phrase,
            image_bytes=samples[i].image_bytes,
            gt_boxes=predictions[i].gt_boxes,
            pred_boxes=predictions[i].pred_boxes,
            iou=predictions[i].iou,
            response=predictions[i].response,
        )
        for i in order
    ]


def write_outputs(
    output_uri: str,
    *,
    info: EvaluationSettings,
    samples: Sequence[EvalSample],
    predictions: Sequence[Prediction],
    seconds: float,
    s3_client: Any | None = None,
    seed: int = 0,
) -> EvaluationResult:
    """Compute the metrics and write predictions, report and (last) metrics.json."""
    import pyarrow.parquet as pq

    from grounding_ops.evaluation.plots import evaluation_plots
    from grounding_ops.evaluation.report import render_report

    if not predictions:
        raise EvaluationError("no predictions to write: the split is empty")
    metrics = compute_metrics(
        [p.iou for p in predictions],
        [p.score for p in predictions],
        [p.format_ok for p in predictions],
        [p.source for p in predictions],
        seed=seed,
    )
    samples_per_s = len(predictions) / seconds if seconds > 0 else 0.0
    store = open_store(output_uri, s3_client=s3_client)

    buffer = io.BytesIO()
    pq.write_table(predictions_table(predictions), buffer)
    store.put_bytes(PREDICTIONS_FILE, buffer.getvalue())

    report_info: dict[str, Any] = {
        "model_uri": info.model_uri,
        "dataset_uri": info.dataset_uri,
        "dataset_version": info.dataset_version,
        "split": info.split,
        "protocol": info.protocol,
        "engine": info.engine,
    }
    report_info.update({"samples": len(predictions), "samples/s": f"{samples_per_s:.3f}"})
    examples = _report_examples(samples, predictions)
    plots = evaluation_plots(ious=[p.iou for p in predictions], metrics=metrics, examples=examples)
    for name, data in plots.items():
        store.put_bytes(f"{PLOTS_PREFIX}/{name}", data)
    buffer = io.BytesIO()
    pq.write_table(examples_table(examples), buffer)
    store.put_bytes(EXAMPLES_FILE, buffer.getvalue())
    page = render_report(
        title=f"Evaluation of {info.model_uri}",
        info=report_info,
        metrics=metrics,
        ious=[p.iou for p in predictions],
        examples=examples,
        plots=plots,
    )
    store.put_bytes(REPORT_FILE, page.encode("utf-8"))

    record = EvaluationRecord(
        **{f.name: getattr(info, f.name) for f in fields(info)},  # the settings, as evaluated
        n_samples=len(predictions),
        generation_seconds=seconds,
        samples_per_s=samples_per_s,
        metrics=metrics.to_dict(),
        flat_metrics={**metrics.flat(), "samples_per_s": samples_per_s},
        files={name: store.url(name) for name in OUTPUT_FILES},
        plots={name: store.url(f"{PLOTS_PREFIX}/{name}") for name in plots},
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tool_version=__version__,
    )
    record.save(store)
    return EvaluationResult(
        output_uri=store.uri,
        model_uri=info.model_uri,
        dataset_uri=info.dataset_uri,
        dataset_version=info.dataset_version,
        split=info.split,
        protocol=info.protocol,
        engine=info.engine,
        n_samples=len(predictions),
        samples_per_s=samples_per_s,
        metrics=metrics,
        files=dict(record.files),
    )


def read_evaluation_record(output_uri: str, *, s3_client: Any | None = None) -> EvaluationRecord:
    """The :class:`EvaluationRecord` (``metrics.json``) an evaluation wrote to ``output_uri``."""
    try:
        return EvaluationRecord.load(open_store(output_uri, s3_client=s3_client))
    except RecordError as exc:
        raise EvaluationError(f"{exc}: run the evaluation first, or rerun it with this version") from exc


# -- lineage ------------------------------------------------------------------------------


def training_lineage(model_uri: str, *, s3_client: Any | None = None) -> ModelLineage:
    """Lineage of a trained model from the training ``run.json`` next to it.

    The trainer writes ``<output>/run.json`` and the model to ``<output>/final`` (or a
    checkpoint below ``<output>/checkpoints``), so the model folder and up to three
    parents are searched. Empty for a base model that was not trained here.
    """
    text = str(model_uri).rstrip("/")
    candidates = [text]
    for _ in range(3):
        head, _, tail = text.rpartition("/")
        if not head or not tail or head.endswith(":/") or head.endswith(":"):
            break
        candidates.append(head)
        text = head
    for uri in candidates:
        try:
            store = open_store(uri, s3_client=s3_client)
            if not RunRecord.exists(store):
                continue
            record = RunRecord.load(store)
        except (StorageError, RecordError, OSError) as exc:
            log.warning("no lineage from %s: %s", uri, exc)
            continue
        return ModelLineage.of_run(record, store.uri)
    return ModelLineage()


# -- the whole evaluation -----------------------------------------------------------------


def evaluate(
    model_uri: str,
    dataset_uri: str,
    split: str = "val",
    engine: str = "transformers",
    max_samples: int | None = None,
    batch_size: int | None = None,
    output_uri: str | None = None,
    *,
    role: str = "candidate",
    tags: Mapping[str, str] | None = None,
    max_new_tokens: int | None = None,
    work_dir: str | Path | None = None,
    s3_client: Any | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Evaluate the Hugging Face checkpoint at ``model_uri`` on ``split`` of a dataset version.

    Writes ``predictions.parquet``, ``report.html`` and ``metrics.json`` (last) under
    ``output_uri``. ``role="base"`` marks the evaluation of an untrained base model,
    the bar the first champion must clear; ``tags`` travel to the MLflow run.
    """
    from grounding_ops.evaluation.generate import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_MAX_NEW_TOKENS,
        ENGINES,
        check_engine,
        generate,
    )

    if output_uri is None:
        raise EvaluationError("an output URI is required (--output)")
    if engine not in ENGINES:
        raise EvaluationError(f"unknown engine {engine!r}; use one of: {', '.join(ENGINES)}")
    if role not in ROLES:
        raise EvaluationError(f"unknown role {role!r}; use one of: {', '.join(ROLES)}")
    if max_samples is not None and max_samples < 1:
        raise EvaluationError(f"--max-samples must be at least 1, got {max_samples}")
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE if engine == "transformers" else 256
    if batch_size < 1:
        raise EvaluationError(f"--batch-size must be at least 1, got {batch_size}")
    max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    check_engine(engine)

    with tempfile.TemporaryDirectory(prefix="grounding-eval-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        manifest, split_path = fetch_dataset(dataset_uri, work / "dataset", split, s3_client=s3_client)
        samples = read_samples(split_path, max_samples)
        if not samples:
            raise EvaluationError(f"the '{split}' split of {dataset_uri} is empty")
        model_dir = fetch_model(model_uri, work / "model", s3_client=s3_client)
        log.info("evaluating %s on %d samples of %s/%s with %s", model_uri, len(samples), dataset_uri, split, engine)

        requests = build_requests(samples)
        started = time.perf_counter()
        output = generate(
            engine, model_dir, requests, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
        )
        seconds = output.seconds or (time.perf_counter() - started)
        predictions = [score_sample(s, r) for s, r in zip(samples, output.responses)]

    protocols = sorted({s.protocol for s in samples})
    info = EvaluationSettings(
        model_uri=str(model_uri),
        dataset_uri=str(dataset_uri),
        dataset_version=str(manifest.get("version") or ""),
        dataset_manifest_sha256=_manifest_digest(manifest),
        split=split,
        protocol=str(manifest.get("protocol") or ",".join(protocols)),
        engine=engine,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_samples=max_samples,
        role=role,
        tags=dict(tags or {}),
        lineage=training_lineage(model_uri, s3_client=s3_client),
    )
    result = write_outputs(
        output_uri, info=info, samples=samples, predictions=predictions, seconds=seconds, s3_client=s3_client
    )
    log.info("evaluation written to %s: %s", result.output_uri, result.summary())
    return result


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode("utf-8")).hexdigest()
