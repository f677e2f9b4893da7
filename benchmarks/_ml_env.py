"""Shared by the benchmarks that need torch: re-run them with the ML environment's Python."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ensure_ml_python() -> None:
    """Return if torch imports; else exec this script with ``.venv-ml/bin/python``, or exit saying how."""
    if importlib.util.find_spec("torch") is not None:
        return
    ml_python = REPO / ".venv-ml" / "bin" / "python"
    if ml_python.exists() and Path(sys.prefix).resolve() != ml_python.parent.parent.resolve():
        os.execv(str(ml_python), [str(ml_python), *sys.argv])
    sys.exit("this benchmark needs torch: run it with the ML environment (.venv-ml/bin/python, `make setup-ml`)")
