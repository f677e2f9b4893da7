"""Evaluation of checkpoints: greedy generation, reward scoring, metrics with bootstrap CIs.

:mod:`metrics` (numpy metrics and intervals), :mod:`generate` (transformers and vLLM
engines), :mod:`report` (the HTML report), :mod:`evaluate` (the whole evaluation,
files only) and :mod:`cli` (``grounding-ops evaluate``). MLflow logging lives in
:mod:`grounding_ops.registry.tracking` (platform environment).
"""
