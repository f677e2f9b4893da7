"""Which trainer image a container runs: the default per hardware choice, its Variable, its digest."""

from __future__ import annotations

import os
from typing import Any, Callable

DEFAULT_IMAGES: dict[str, str] = {
    "cpu": "grounding-ops/trainer-cpu:latest",
    "gpu": "grounding-ops/trainer-verl:latest",
}
# Airflow Variables that override the image per engine (e.g. a registry path with a digest).
IMAGE_VARIABLES: dict[str, str] = {"cpu": "grounding_trainer_image_cpu", "gpu": "grounding_trainer_image_gpu"}


def resolve_engine(engine: str) -> str:
    if engine not in DEFAULT_IMAGES:
        raise ValueError(f"engine {engine!r} is unknown: use one of {', '.join(DEFAULT_IMAGES)}")
    return engine


def resolve_image(engine: str, override: str | None = None) -> str:
    """The trainer image for ``engine`` (``gpu``/``cpu``), or ``override`` (an Airflow Variable's value)."""
    resolve_engine(engine)
    image = (override or "").strip() or DEFAULT_IMAGES[engine]
    if any(c.isspace() for c in image) or image.startswith("-"):
        raise ValueError(f"image {image!r} is not a Docker image reference; fix Variable {IMAGE_VARIABLES[engine]}")
    return image


def image_reference(image: str, client: Callable[[], Any] | None = None) -> str:
    """``image`` pinned to its content: the registry digest (``repo@sha256:...``) when it came from a
    registry, else ``image@<local image id>``; ``image`` itself when the daemon cannot say.
    ``client`` makes the Docker API client (default: the daemon of ``DOCKER_HOST``)."""
    try:
        api: Any
        if client is not None:
            api = client()
        else:
            import docker

            api = docker.APIClient(  # type: ignore[attr-defined]
                base_url=os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock", timeout=10
            )
        info = api.inspect_image(image)
    except Exception as exc:  # noqa: BLE001 - an unknown digest is recorded as such, not fatal here
        import logging

        logging.getLogger(__name__).warning("cannot inspect image %s (%s): recording its tag only", image, exc)
        return image
    digests = [d for d in info.get("RepoDigests") or [] if "@sha256:" in d]
    return sorted(digests)[0] if digests else f"{image}@{info['Id']}"


def image_override(engine: str) -> str | None:
    from airflow.sdk import Variable

    return Variable.get(IMAGE_VARIABLES[engine], default=None)
