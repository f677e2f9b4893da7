"""Checks of a dataset against a spec before VeRL starts (minutes of Ray and model loading).

:func:`check_dataset` refuses, with the numbers and the fix:

- pixel bounds, resize factor or protocol that differ from the dataset manifest's (the manifest
  is the one source of truth: the export resized every image to its ``resized_size`` and the
  answers of resized-frame protocols are in that frame, so any other bounds would move every
  coordinate the reward reads);
- rows whose ``resized_size`` is not what the model family's resize rule makes of the original
  size (a dataset exported for another family);
- a train split that VeRL's overlong-prompt filter would leave smaller than one batch (verl 0.9.1
  then divides by zero steps per epoch) and a val split it would leave empty (batch size 0).

Prompt lengths are bounded from above without a tokenizer: the visual tokens exactly
(``(w/f)*(h/f)`` for the resized image and the family's factor ``f``), the text by its UTF-8
bytes (a byte-level BPE token is at least one byte) plus the chat template. A row counted as
fitting surely fits; the step target is computed from those rows, so VeRL never runs out first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from grounding_ops.data.vision import DEFAULT_FAMILY, resize_factor, smart_resize

# Tokens of the Qwen chat template around the user's text (system prompt, role markers, vision
# start/end), with a margin; tests/ml/test_verl_dataset.py checks the bound against verl's count.
TEMPLATE_TOKENS = 40


class DatasetMismatch(ValueError):
    """The dataset and the spec disagree; the message says what to change."""


@dataclass(frozen=True)
class SplitFit:
    rows: int
    fitting: int  # rows whose prompt surely fits max_prompt_length
    longest: int  # the longest prompt's upper bound, in tokens

    @property
    def overlong(self) -> int:
        return self.rows - self.fitting


@dataclass(frozen=True)
class DatasetFit:
    train: SplitFit
    val: SplitFit | None

    def steps(self, spec: Any) -> int:
        """The step target: ``total_steps``, else verl's own rule over the rows that fit."""
        if spec.total_steps:
            return int(spec.total_steps)
        return (self.train.fitting // int(spec.train_batch_size)) * int(spec.total_epochs)


def prompt_token_bound(prompt: Any, resized_size: Any, factor: int) -> int:
    text = "".join(str(m.get("content", "")).replace("<image>", "") for m in prompt or [])
    width, height = int(resized_size[0]), int(resized_size[1])
    return (width // factor) * (height // factor) + len(text.encode("utf-8")) + TEMPLATE_TOKENS


def _split_fit(path: Path, spec: Any, factor: int, problems: list[str], name: str) -> SplitFit:
    import pyarrow.parquet as pq

    from grounding_ops.protocols import get_protocol

    table = pq.read_table(path, columns=["prompt", "reward_model"])
    rows = table.num_rows
    fitting = longest = 0
    wrong: list[str] = []
    for prompt, reward in zip(table.column("prompt").to_pylist(), table.column("reward_model").to_pylist()):
        truth = (reward or {}).get("ground_truth") or {}
        resized, original = truth.get("resized_size"), truth.get("image_size")
        if not resized or not original:
            problems.append(f"{name} rows have no image_size/resized_size in their ground truth: re-export the dataset")
            return SplitFit(rows, 0, 0)
        if get_protocol(truth.get("protocol") or spec.protocol).frame == "resized" and len(wrong) < 3:
            expected = smart_resize(
                int(original[0]),
                int(original[1]),
                factor=factor,
                min_pixels=spec.min_pixels,
                max_pixels=spec.max_pixels,
            )
            if list(expected) != [int(v) for v in resized]:
                wrong.append(
                    f"{original[0]}x{original[1]} -> {resized[0]}x{resized[1]} (expected {expected[0]}x{expected[1]})"
                )
        bound = prompt_token_bound(prompt, resized, factor)
        longest = max(longest, bound)
        fitting += bound <= spec.max_prompt_length
    if wrong:
        problems.append(
            f"{name} rows were resized for another model: {'; '.join(wrong)} with {spec.model_family}'s factor "
            f"{factor} and min_pixels={spec.min_pixels}, max_pixels={spec.max_pixels}; re-export the dataset with "
            f"--model-family {spec.model_family}"
        )
    return SplitFit(rows, fitting, longest)


def check_dataset(spec: Any, manifest: Mapping[str, Any], train: Path, val: Path | None) -> DatasetFit:
    """Raise :class:`DatasetMismatch` listing every problem, or return how the rows fit."""
    problems: list[str] = []
    settings = manifest.get("settings") or {}
    bounds = (settings.get("min_pixels"), settings.get("max_pixels"))
    if None not in bounds and (spec.min_pixels, spec.max_pixels) != tuple(int(b) for b in bounds):
        problems.append(
            f"the dataset was exported with min_pixels={bounds[0]}, max_pixels={bounds[1]} but the spec says "
            f"min_pixels={spec.min_pixels}, max_pixels={spec.max_pixels}: the images were resized (and the answers "
            f"written) for the dataset's bounds; train with --set min_pixels={bounds[0]} --set max_pixels={bounds[1]} "
            "or export the dataset again with the spec's bounds"
        )
    protocol = manifest.get("protocol") or settings.get("protocol")
    if protocol and protocol != spec.protocol:
        problems.append(
            f"the dataset's prompts ask for protocol {protocol} but the spec's reward reads {spec.protocol}: "
            f"train with --set protocol={protocol} or export the dataset with --protocol {spec.protocol}"
        )
    family = settings.get("model_family") or DEFAULT_FAMILY
    factor = resize_factor(spec.model_family)
    if resize_factor(family) != factor:
        problems.append(
            f"the dataset was resized for {family} (factor {resize_factor(family)}) but the spec trains "
            f"{spec.model_family} (factor {factor}): export the dataset with --model-family {spec.model_family}"
        )
    if problems:  # the row checks below would only repeat these
        raise DatasetMismatch("the dataset does not fit the spec:\n  - " + "\n  - ".join(problems))

    train_fit = _split_fit(train, spec, factor, problems, "train")
    val_fit = _split_fit(val, spec, factor, problems, "val") if val is not None else None
    hint = (
        f"raise max_prompt_length (the longest prompt needs up to {max(train_fit.longest, val_fit.longest if val_fit else 0)} "
        "tokens), lower max_pixels at export, or export more rows"
    )
    if train_fit.fitting < spec.train_batch_size:
        problems.append(
            f"only {train_fit.fitting} of {train_fit.rows} train rows fit max_prompt_length={spec.max_prompt_length} "
            f"({train_fit.overlong} would be filtered as overlong), fewer than one batch (train_batch_size="
            f"{spec.train_batch_size}): verl would stop with a division by zero; lower train_batch_size, or {hint}"
        )
    if val_fit is not None and val_fit.rows and not val_fit.fitting:
        problems.append(
            f"none of the {val_fit.rows} val rows fits max_prompt_length={spec.max_prompt_length}: verl would "
            f"validate with a batch of 0; {hint}"
        )
    if problems:
        raise DatasetMismatch("the dataset does not fit the spec:\n  - " + "\n  - ".join(problems))
    return DatasetFit(train_fit, val_fit)
