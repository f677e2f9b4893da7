"""The registered grounding model as an MLflow pyfunc: load it, predict with it, serve it.

A candidate sent to promotion is logged as an MLflow model (a ``LoggedModel`` whose
artifacts are the Hugging Face folder, the ``grounding_ops`` code and an explicit
signature) and the registry version is created from it, so
``mlflow.pyfunc.load_model("models:/<name>@champion")`` and ``mlflow models serve``
work with only MLflow access configured (the artifacts come through the tracking
server's artifact store).

Input: a DataFrame with ``image`` (PNG/JPEG bytes; base64 in JSON requests to a served
model) and ``phrase``. Output: ``boxes`` (``[x1, y1, x2, y2]`` in pixels of the given
image), ``response`` (the raw answer) and ``format_ok``. Prediction goes through the
evaluation's own code: :func:`grounding_ops.protocols.build_prompt`, the transformers
engine of :mod:`grounding_ops.evaluation.generate` (same chat template, same resize)
and the protocol parser the reward uses, so the registry answers as the evaluation did.

Logging runs in the platform environment (no torch); loading and predicting need the
trainer environment's pins (torch, transformers, mlflow-skinny), which are the
model's ``pip_requirements``.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

import mlflow.pyfunc

from grounding_ops.vocabulary import DEFAULT_MODEL_NAME, Tag

log = logging.getLogger(__name__)

HF_ARTIFACT = "hf_model"
LOGGED_MODEL_NAME = DEFAULT_MODEL_NAME
INPUT_COLUMNS = ("image", "phrase")
OUTPUT_COLUMNS = ("boxes", "response", "format_ok")
# Packages the model needs at inference, pinned as in the trainer environment.
INFERENCE_PACKAGES = (
    "mlflow-skinny",
    "torch",
    "torchvision",
    "transformers",
    "tokenizers",
    "accelerate",
    "pillow",
    "numpy",
    "pandas",
    "pyarrow",
    "cloudpickle",
)
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TRAINER_CONSTRAINTS = _PACKAGE_ROOT.parent / "docker" / "trainer" / "constraints.txt"
# Files of a training checkpoint that are trainer state, not part of the model.
_TRAINER_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")


class GroundingModelError(RuntimeError):
    """The grounding model cannot be logged or asked as requested; the message says what to fix."""


def signature() -> Any:
    """The model's explicit signature (DataFrame in, DataFrame out)."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = Schema([ColSpec(DataType.binary, "image"), ColSpec(DataType.string, "phrase")])
    outputs = Schema(
        [
            ColSpec(Array(Array(DataType.double)), "boxes"),
            ColSpec(DataType.string, "response"),
            ColSpec(DataType.boolean, "format_ok"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements(constraints: Path = TRAINER_CONSTRAINTS) -> list[str]:
    """The inference packages with their exact trainer pins (``docker/trainer/constraints.txt``)."""
    if not constraints.is_file():
        raise GroundingModelError(
            f"the trainer pins {constraints} are missing: log models from a checkout of the project"
        )
    pins: dict[str, str] = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    missing = [p for p in INFERENCE_PACKAGES if p not in pins]
    if missing:
        raise GroundingModelError(f"{constraints} pins none of: {', '.join(missing)}; add them to the trainer pins")
    return [f"{p}=={pins[p]}" for p in INFERENCE_PACKAGES]


def resized_size(processor: Any, width: int, height: int) -> tuple[int, int]:
    """The size the model's processor feeds the model (the frame of resized-pixel answers)."""
    from grounding_ops.data.vision import smart_resize

    ip = processor.image_processor
    size = getattr(ip, "size", None) or {}
    min_pixels = int(size.get("shortest_edge") or ip.min_pixels)
    max_pixels = int(size.get("longest_edge") or ip.max_pixels)
    factor = int(ip.patch_size) * int(getattr(ip, "merge_size", 1))
    return smart_resize(width, height, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def _image_bytes(value: Any, row: int) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):  # base64 text, as JSON requests carry binary columns
        import base64
        import binascii

        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise GroundingModelError(f"row {row}: image is text but not base64 PNG/JPEG bytes") from exc
    raise GroundingModelError(f"row {row}: image must be PNG/JPEG bytes, got {type(value).__name__}")


class GroundingModel(mlflow.pyfunc.PythonModel):
    """Boxes for a phrase in an image, answered by the project's own generation and parsing."""

    def load_context(self, context: Any) -> None:
        from grounding_ops.evaluation.generate import load_transformers

        config = dict(context.model_config or {})
        self.protocol = str(config.get("protocol") or "qwen2.5-vl")
        self.max_new_tokens = int(config.get("max_new_tokens") or 128)
        self.batch_size = int(config.get("batch_size") or 8)
        self.loaded = load_transformers(
            context.artifacts[HF_ARTIFACT],
            device=str(config.get("device") or "cpu"),
            dtype=str(config.get("dtype") or "float32"),
        )

    def predict(self, context, model_input, params=None):  # noqa: ANN001 (MLflow infers signatures from hints)
        import pandas as pd
        from PIL import Image

        from grounding_ops.evaluation.generate import GenerationRequest, generate_loaded
        from grounding_ops.protocols import build_prompt, get_protocol

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
        if missing:
            raise GroundingModelError(
                f"the input lacks the column(s) {', '.join(missing)}: pass a DataFrame with 'image' (PNG/JPEG bytes) "
                "and 'phrase' (text)"
            )
        protocol = get_protocol(self.protocol)
        requests, sizes = [], []
        for row, (image, phrase) in enumerate(zip(frame["image"], frame["phrase"])):
            data = _image_bytes(image, row)
            if not isinstance(phrase, str) or not phrase.strip():
                raise GroundingModelError(f"row {row}: phrase must be non-empty text")
            try:
                with Image.open(io.BytesIO(data)) as img:
                    width, height = img.size
            except Exception as exc:
                raise GroundingModelError(f"row {row}: image is not a readable PNG/JPEG ({exc})") from exc
            resized = resized_size(self.loaded.processor, width, height)
            sizes.append(((width, height), resized))
            requests.append(GenerationRequest(str(row), build_prompt(phrase, protocol), data, resized))
        output = generate_loaded(self.loaded, requests, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens)
        boxes, formats = [], []
        for response, (image_size, resized) in zip(output.responses, sizes):
            parsed = protocol.parse(response, image_size, resized)
            boxes.append([[float(v) for v in box] for box in parsed.boxes])
            formats.append(bool(parsed.format_ok))
        return pd.DataFrame({"boxes": boxes, "response": list(output.responses), "format_ok": formats})


def save_grounding_model(
    path: Path, model_dir: Path, *, protocol: str, max_new_tokens: int = 128, constraints: Path = TRAINER_CONSTRAINTS
) -> Path:
    """Write the pyfunc model (MLmodel, signature, code, the Hugging Face folder) to ``path``."""
    if not (model_dir / "config.json").is_file():
        raise GroundingModelError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=GroundingModel(),
        artifacts={HF_ARTIFACT: str(model_dir)},
        code_paths=[str(_PACKAGE_ROOT)],
        signature=signature(),
        pip_requirements=pip_requirements(constraints),
        model_config={"protocol": protocol, "max_new_tokens": int(max_new_tokens), "device": "cpu", "dtype": "float32"},
    )
    return path


def _copy_model_folder(source: str, dest: Path, s3_client: Any | None) -> Path:
    """The Hugging Face folder at ``source`` (local or ``s3://``) copied to ``dest`` without trainer state."""
    import shutil

    from grounding_ops.evaluation.evaluate import EvaluationError, fetch_model

    try:
        folder = fetch_model(source, dest, s3_client=s3_client)
    except EvaluationError as exc:
        raise GroundingModelError(f"cannot log the model at {source}: {exc}") from exc
    if folder != dest:  # a local folder is used in place by fetch_model: copy it
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(*_TRAINER_STATE, "rng_state*.pth"))
    for path in [*(dest / n for n in _TRAINER_STATE), *dest.glob("rng_state*.pth")]:
        path.unlink(missing_ok=True)
    return dest


def training_mlflow_run(client: Any, training_output_uri: str | None) -> str | None:
    """The MLflow training run logged for the training output ``training_output_uri``, if any."""
    if not training_output_uri:
        return None
    from grounding_ops.registry.tracking import quote_filter_value
    from grounding_ops.registry.training_run import TRAINING_EXPERIMENT

    experiment = client.get_experiment_by_name(TRAINING_EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{Tag.OUTPUT_URI}` = {quote_filter_value(training_output_uri.rstrip('/'))}",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].info.run_id if runs else None


def weights_uri(version: Any) -> str:
    """Where the Hugging Face weights of a registered version came from (its evaluated model URI)."""
    return (version.tags or {}).get(Tag.MODEL_URI) or version.source


def register_grounding_model(
    client: Any,
    model_name: str,
    *,
    source: str,
    run_id: str,
    tags: Mapping[str, str],
    description: str,
    s3_client: Any | None = None,
) -> Any:
    """Log the evaluated model at ``source`` as an MLflow pyfunc model and register a version of it.

    ``run_id`` is the candidate's evaluation run (the version's run); the logged model's
    source run is the MLflow training run of the model when one was logged (see
    :mod:`grounding_ops.registry.training_run`), and the version is tagged with it.
    Returns the created ``ModelVersion``; its source is ``models:/<model_id>``.
    """
    from mlflow.entities import LoggedModelStatus

    run = client.get_run(run_id)
    protocol = run.data.params.get("protocol") or tags.get(Tag.PROTOCOL) or "qwen2.5-vl"
    max_new_tokens = int(run.data.params.get("max_new_tokens") or 128)
    training_run_id = training_mlflow_run(client, tags.get(Tag.TRAINING_OUTPUT_URI))
    version_tags = {**tags, Tag.MODEL_URI: source}
    if training_run_id:
        version_tags[Tag.TRAINING_MLFLOW_RUN_ID] = training_run_id
    with tempfile.TemporaryDirectory(prefix="grounding-pyfunc-") as tmp:
        model_dir = _copy_model_folder(source, Path(tmp) / "hf", s3_client)
        local = save_grounding_model(Path(tmp) / "pyfunc", model_dir, protocol=protocol, max_new_tokens=max_new_tokens)
        logged = client.create_logged_model(
            run.info.experiment_id,
            name=LOGGED_MODEL_NAME,
            source_run_id=training_run_id or run_id,
            tags={Tag.MODEL_URI: source, Tag.EVALUATION_RUN_ID: run_id},
            params={"protocol": protocol, "max_new_tokens": str(max_new_tokens)},
            model_type="grounding-pyfunc",
        )
        try:
            client.log_model_artifacts(logged.model_id, str(local))
        except Exception:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    version_tags[Tag.LOGGED_MODEL_ID] = logged.model_id
    version = client.create_model_version(
        model_name,
        source=f"models:/{logged.model_id}",
        run_id=run_id,
        tags=version_tags,
        description=description,
        model_id=logged.model_id,
    )
    log.info(
        "logged %s as MLflow model %s and registered it as %s v%s", source, logged.model_id, model_name, version.version
    )
    return version


def predict_image(model_uri: str, image: bytes, phrase: str) -> dict[str, Any]:
    """Ask the MLflow model at ``model_uri`` (e.g. ``models:/grounding-model@champion``) for one image."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise GroundingModelError(
            f"cannot load {model_uri} from MLflow at {mlflow.get_tracking_uri()}: {exc.message} "
            "(set MLFLOW_TRACKING_URI to the registry's server)"
        ) from exc
    row = model.predict(pd.DataFrame({"image": [image], "phrase": [phrase]})).iloc[0]
    boxes = [[float(v) for v in box] for box in row["boxes"]]
    return {"boxes": boxes, "format_ok": bool(row["format_ok"]), "response": str(row["response"])}


def draw_boxes(image: bytes, boxes: list[list[float]], color: str = "#dc1e1e") -> Any:
    """The image (RGB PIL) with ``boxes`` (pixel xyxy) drawn."""
    from PIL import Image, ImageDraw

    picture = Image.open(io.BytesIO(image)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 200))
    for box in boxes:
        draw.rectangle([float(v) for v in box], outline=color, width=width)
    return picture


__all__ = [
    "GroundingModel",
    "GroundingModelError",
    "draw_boxes",
    "predict_image",
    "register_grounding_model",
    "save_grounding_model",
    "signature",
    "weights_uri",
]
