"""Entry point VeRL loads by path.

    reward.custom_reward_function.path=<this file>
    reward.custom_reward_function.name=compute_score

VeRL imports this file with ``importlib.util.spec_from_file_location``, outside
the package, so the package is imported absolutely; when it is not installed
the source tree this file sits in is put on ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from grounding_ops.reward.scoring import compute_score as _compute_score
except ImportError:  # loaded from a source tree that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from grounding_ops.reward.scoring import compute_score as _compute_score


def compute_score(data_source=None, solution_str="", ground_truth=None, extra_info=None, **kwargs):
    """See :func:`grounding_ops.reward.scoring.compute_score`."""
    return _compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
