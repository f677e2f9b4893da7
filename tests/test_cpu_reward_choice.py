"""The CPU engine's reward choice: the IoU reward, or the constant control of benchmarks/grpo_gain.py."""

from __future__ import annotations

import json

import pytest

from grounding_ops.protocols import get_protocol
from grounding_ops.training.cpu_engine import CONSTANT_REWARD, FORMAT_WEIGHT, EngineError, make_reward_function
from grounding_ops.training.presets import get_preset

TRUTH = json.dumps(
    {"boxes": [[10, 10, 50, 50]], "protocol": "qwen2.5-vl", "image_size": [112, 112], "resized_size": [112, 112]}
)
PERFECT = get_protocol("qwen2.5-vl").format_answer([[10, 10, 50, 50]], [112, 112], [112, 112])
COMPLETIONS = [[{"role": "assistant", "content": PERFECT}], [{"role": "assistant", "content": "no idea"}]]


def _rewards(kind: str) -> tuple[list[float], dict[str, float]]:
    logged: dict[str, float] = {}
    rewards = make_reward_function(kind)(COMPLETIONS, [TRUTH, TRUTH], log_metric=logged.__setitem__)
    return rewards, logged


def test_iou_reward_ranks_answers() -> None:
    rewards, logged = _rewards("iou")
    assert rewards == [1.0, 0.0] and logged["iou"] == pytest.approx(0.5)


def test_constant_reward_gives_no_signal_but_logs_the_iou() -> None:
    rewards, logged = _rewards("constant")
    assert rewards == [CONSTANT_REWARD, CONSTANT_REWARD]
    assert logged["iou"] == pytest.approx(0.5) and logged["format_ok"] == pytest.approx(0.5)


def test_unknown_reward_is_refused() -> None:
    with pytest.raises(EngineError, match="reward_function 'random' is unknown"):
        make_reward_function("random")


def test_spec_validates_the_reward_choice() -> None:
    tiny = get_preset("tiny-cpu")
    assert tiny.reward_function == "iou"
    tiny.with_overrides(["reward_function=constant"]).validate()
    with pytest.raises(ValueError, match="reward_function 'random' is unknown"):
        tiny.with_overrides(["reward_function=random"]).validate()
    with pytest.raises(ValueError, match="use reward_function=iou with VeRL"):
        get_preset("qwen2.5-vl-3b").with_overrides(["reward_function=constant"]).validate()


def test_a_completion_that_runs_to_the_length_limit_earns_no_format_share() -> None:
    """The same perfect answer twice: once ended by the end token, once cut off at the length limit
    (TRL passes the token ids up to and including the first end token)."""
    end = 7
    logged: dict[str, float] = {}
    reward = make_reward_function("iou", end_token_ids=[end])
    both = [COMPLETIONS[0], COMPLETIONS[0]]
    rewards = reward(both, [TRUTH, TRUTH], log_metric=logged.__setitem__, completion_ids=[[1, 2, end], [1, 2, 3]])
    assert rewards == [pytest.approx(1.0), pytest.approx(1.0 - FORMAT_WEIGHT)]
    assert logged["ended"] == pytest.approx(0.5) and logged["iou"] == pytest.approx(1.0)
    # without token ids (or end tokens) every completion counts as ended
    assert make_reward_function("iou")(both, [TRUTH, TRUTH]) == [pytest.approx(1.0)] * 2
