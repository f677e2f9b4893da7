"""What the registry says about the models: the champion, the last challenger, and whether a night must train."""

from __future__ import annotations
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping
from grounding_ops.pipeline.train_params import (
    training_values,
)
from grounding_ops.vocabulary import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    Tag,
)

log = logging.getLogger(__name__)


def training_fingerprint(params: Mapping[str, Any], image: str | None = None) -> str:
    """A short hash of the form values that change what is trained (not the dataset version), and of
    the trainer image (``repo@sha256:...``) when given."""
    chosen = training_values(params)
    if image:
        chosen["image"] = image
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelState:
    """What a registered model version was trained from (read from its evaluation run's tags)."""

    alias: str
    version: str
    dataset_version: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class Decision:
    train: bool
    reason: str


def decide_training(
    dataset_version: str,
    fingerprint: str,
    champion: ModelState | None,
    challenger: ModelState | None = None,
    *,
    force: bool = False,
) -> Decision:
    """Train only when the dataset version or the training settings differ from the champion's
    (and from the last challenger's, so a rejected candidate is not retrained every night)."""
    if force:
        return Decision(True, f"forced by the form (dataset {dataset_version}, settings {fingerprint})")
    if champion is None:
        return Decision(True, f"no champion yet: training on dataset {dataset_version}")
    for state in (champion, challenger):
        if state is None:
            continue
        if state.dataset_version == dataset_version and state.fingerprint == fingerprint:
            what = "the champion" if state.alias == CHAMPION_ALIAS else "the last candidate (not promoted)"
            return Decision(
                False,
                f"nothing changed: {what}, version {state.version}, was trained on dataset {dataset_version} "
                f"with the same settings ({fingerprint}); publish a new dataset version, change a setting "
                "or trigger with force=true to train anyway",
            )
    if champion.dataset_version != dataset_version:
        return Decision(
            True,
            f"new dataset version {dataset_version} (champion v{champion.version} was "
            f"trained on {champion.dataset_version or 'an unknown version'})",
        )
    return Decision(
        True,
        f"training settings changed ({champion.fingerprint or 'unknown'} -> {fingerprint}) "
        f"on dataset {dataset_version}",
    )


def model_states(tracking_uri: str, name: str) -> tuple[ModelState | None, ModelState | None]:
    """The champion's and the challenger's :class:`ModelState` (None where the alias is unset)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    states: list[ModelState | None] = []
    for alias in (CHAMPION_ALIAS, CHALLENGER_ALIAS):
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                states.append(None)
                continue
            raise
        tags = dict(version.tags or {})
        run_id = tags.get(Tag.EVALUATION_RUN_ID) or version.run_id
        if run_id:
            try:
                tags = {**client.get_run(run_id).data.tags, **tags}
            except MlflowException:
                pass
        states.append(
            ModelState(
                alias=alias,
                version=str(version.version),
                dataset_version=tags.get(Tag.DATASET_VERSION),
                fingerprint=tags.get(Tag.TRAIN_FINGERPRINT),
            )
        )
    return states[0], states[1]


@dataclass(frozen=True)
class Champion:
    version: str
    model_uri: str


def current_champion(tracking_uri: str, name: str) -> Champion | None:
    """The registered model's ``champion`` version and its model URI (None when no champion yet)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    from grounding_ops.registry.pyfunc_model import weights_uri

    # the weights the champion's evaluations name (the version's source is its logged MLflow model)
    return Champion(version=str(version.version), model_uri=weights_uri(version))


def existing_evaluation(tracking_uri: str, model_uri: str, dataset_version: str, split: str) -> str | None:
    """The id of a finished evaluation run of ``model_uri`` on ``dataset_version``/``split``, if any."""
    from grounding_ops.registry import promotion

    return promotion.find_evaluation(promotion.mlflow_client(tracking_uri), model_uri, dataset_version, split)
