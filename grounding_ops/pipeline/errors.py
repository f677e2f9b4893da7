"""The pipeline's own errors: a step that cannot go on, with a message that says what to fix.

They are data errors for the retry policy (:mod:`grounding_ops.pipeline.retry_policy`): the task
fails at once instead of retrying something that cannot succeed.
"""

from __future__ import annotations


class PipelineError(RuntimeError):
    """A training-pipeline step cannot go on; the message says what to fix."""


class NoDatasetYet(PipelineError):
    """No dataset version has been published yet (the first scheduled run after unpausing)."""


class DataPipelineError(RuntimeError):
    """A data-pipeline step cannot go on; the message says what to fix."""
