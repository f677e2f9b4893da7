"""Protocol-aware box parsing and a hack-resistant IoU reward (VeRL custom reward)."""

from grounding_ops.reward.scoring import compute_score, normalize_boxes, score_response

__all__ = ["VERL_REWARD_FUNCTION", "compute_score", "normalize_boxes", "score_response", "verl_reward_path"]


def verl_reward_path() -> str:
    """Path of the file to give VeRL as ``reward.custom_reward_function.path`` (name ``compute_score``)."""
    from pathlib import Path

    return str(Path(__file__).with_name("verl_reward.py"))


VERL_REWARD_FUNCTION = "compute_score"
