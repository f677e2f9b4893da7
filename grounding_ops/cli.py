"""The ``grounding-ops`` command line.

Each subcommand lives in the module of its concept and registers itself through an
``add_parser(subparsers)`` function; module top levels stay light so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Callable, Sequence

from grounding_ops import __version__

# (module, description) for every subcommand module; each defines add_parser(subparsers).
COMMAND_MODULES: tuple[str, ...] = (
    "grounding_ops.data.cli",
    "grounding_ops.training.cli",
    "grounding_ops.evaluate_command",
    "grounding_ops.registry.cli",
    "grounding_ops.tiny_models",
    "grounding_ops.services",
    "grounding_ops.demo",
)


def number_type(
    kind: type[int] | type[float], *, minimum: float | None = None, maximum: float | None = None
) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses an int or float within [minimum, maximum] (NaN refused)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            low = "" if minimum is None else f">= {minimum:g}"
            high = "" if maximum is None else f"<= {maximum:g}"
            raise argparse.ArgumentTypeError(f"{value} must be {' and '.join(b for b in (low, high) if b)}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" messages
    return parse


FRACTION = number_type(float, minimum=0.0, maximum=1.0)
POSITIVE_INT = number_type(int, minimum=1)


class UserError(Exception):
    """An error the user can fix; printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grounding-ops",
        description="Box annotations in, better vision-language grounding models out.",
    )
    parser.add_argument("--version", action="version", version=f"grounding-ops {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
                continue  # that part of the platform is not installed in this environment
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, unwritable folder, file size limit: no traceback, say what to fix
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(
            f"error: {exc.strerror or exc}{where}: check free disk space and that the output and "
            "temporary folders (TMPDIR) are writable",
            file=sys.stderr,
        )
        return 1
