"""Offline builds of the project's Docker images.

* ``grounding-ops/rootfs:bookworm`` — a ``debootstrap --variant=minbase bookworm`` rootfs
  imported into Docker; only made when no such image exists (no registry is needed).
* ``grounding-ops/base:latest`` — ``docker/base/Dockerfile``: Python 3.11 in /opt/venv.
* ``grounding-ops/trainer-cpu-deps:<hash>`` — the trainer's pinned ML stack, installed from a
  wheelhouse served on 127.0.0.1 during the build; rebuilt only when the pins change.
* ``grounding-ops/trainer-cpu:latest`` — the deps image plus the ``grounding_ops`` package.

Builds use the classic builder with host networking (the daemon runs without a bridge),
and the build host's extra CA certificates are copied into the base image.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from grounding_ops.settings import REPO_ROOT

ROOTFS_IMAGE = "grounding-ops/rootfs:bookworm"
BASE_IMAGE = "grounding-ops/base:latest"
TRAINER_CPU_IMAGE = "grounding-ops/trainer-cpu:latest"
TRAINER_DEPS_REPO = "grounding-ops/trainer-cpu-deps"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
CONTEXT_ROOT = REPO_ROOT / "docker" / ".context"


class ImageBuildError(RuntimeError):
    pass


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(argv), flush=True)
    result = subprocess.run(argv, **kwargs)
    if result.returncode != 0:
        raise ImageBuildError(f"command failed ({result.returncode}): {' '.join(argv)}")
    return result


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def docker_build(
    context: Path, tag: str, dockerfile: Path | None = None, build_args: dict[str, str] | None = None
) -> str:
    argv = ["docker", "build", "--network", "host", "-t", tag]
    if dockerfile is not None:
        argv += ["-f", str(dockerfile)]
    for key, value in (build_args or {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    argv.append(str(context))
    _run(argv, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return tag


def build_rootfs_image(mirror: str = DEBIAN_MIRROR) -> str:
    """Import a minbase bookworm rootfs into Docker unless it is there already."""
    if image_exists(ROOTFS_IMAGE):
        return ROOTFS_IMAGE
    if not shutil.which("debootstrap"):
        raise ImageBuildError(
            "debootstrap is not installed: `apt-get install debootstrap` (or build the "
            "base with --build-arg BASE_IMAGE=debian:bookworm-slim from a registry)"
        )
    with tempfile.TemporaryDirectory(prefix="rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror], stdout=subprocess.DEVNULL)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        _run(["docker", "import", "-", ROOTFS_IMAGE], stdin=tar.stdout)
        tar.wait()
    return ROOTFS_IMAGE


def _stage_context(name: str, sources: dict[str, Path]) -> Path:
    """Copy files into docker/.context/<name>/ (ignored by git), replacing what was there."""
    context = CONTEXT_ROOT / name
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    for target, source in sources.items():
        destination = context / target
        if source.is_dir():
            shutil.copytree(
                source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".context")
            )
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return context


def build_base_image() -> str:
    build_rootfs_image()
    context = _stage_context("base", {"Dockerfile": REPO_ROOT / "docker" / "base" / "Dockerfile"})
    certs = context / "certs"
    certs.mkdir()
    if HOST_CA_DIR.is_dir():
        for cert in HOST_CA_DIR.glob("*.crt"):
            shutil.copy2(cert, certs / cert.name)
    return docker_build(context, BASE_IMAGE, build_args={"BASE_IMAGE": ROOTFS_IMAGE})


def trainer_deps_tag() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "constraints.txt", "Dockerfile.cpu-deps"):
        digest.update((REPO_ROOT / "docker" / "trainer" / name).read_bytes())
    return f"{TRAINER_DEPS_REPO}:{digest.hexdigest()[:12]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve a folder on 127.0.0.1 (a pip --find-links wheelhouse for builds)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def fill_wheelhouse(wheelhouse: Path) -> None:
    """Download the trainer's pinned packages (and build tools) into one folder."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    trainer = REPO_ROOT / "docker" / "trainer"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "-d",
            str(wheelhouse),
            "-r",
            str(trainer / "requirements.txt"),
            "-c",
            str(trainer / "constraints.txt"),
            "pip",
            "setuptools",
            "wheel",
        ]
    )


def build_trainer_cpu_image() -> str:
    if not image_exists(BASE_IMAGE):
        build_base_image()
    deps_tag = trainer_deps_tag()
    if not image_exists(deps_tag):
        trainer = REPO_ROOT / "docker" / "trainer"
        context = _stage_context(
            "trainer-deps",
            {
                "Dockerfile": trainer / "Dockerfile.cpu-deps",
                "requirements.txt": trainer / "requirements.txt",
                "constraints.txt": trainer / "constraints.txt",
            },
        )
        wheelhouse = CONTEXT_ROOT / "wheelhouse"
        fill_wheelhouse(wheelhouse)
        with serve_directory(wheelhouse) as url:
            docker_build(context, deps_tag, build_args={"BASE_IMAGE": BASE_IMAGE, "WHEELS_URL": url})
    context = _stage_context(
        "trainer-cpu",
        {
            "Dockerfile": REPO_ROOT / "docker" / "trainer" / "Dockerfile.cpu",
            "pyproject.toml": REPO_ROOT / "pyproject.toml",
            "README.md": REPO_ROOT / "README.md",
            "grounding_ops": REPO_ROOT / "grounding_ops",
        },
    )
    return docker_build(context, TRAINER_CPU_IMAGE, build_args={"DEPS_IMAGE": deps_tag, "GIT_COMMIT": git_commit()})


def git_commit() -> str:
    """The checkout's commit (recorded in training runs), or "unknown" outside a git checkout."""
    result = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"
