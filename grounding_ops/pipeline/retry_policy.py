"""Which task failures are worth a retry.

A **data error** (bad input, a missing manifest, a metric the evaluation did not produce, a refused
promotion, a wrong setting) fails the task at once: a retry would fail the same way, only later.
A **transient** error (S3 or MLflow unreachable, timing out, throttling, answering 5xx) is retried
with the task's ``retries`` and exponential backoff. Anything else keeps Airflow's default (retried).
A data error caused by a transient one (``raise PipelineError(...) from exc``) counts as transient.
"""

from __future__ import annotations

from typing import Iterator

TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
    }
)
TRANSIENT_MLFLOW_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _data_error_types() -> tuple[type[BaseException], ...]:
    from grounding_ops.pipeline.errors import DataPipelineError, PipelineError
    from grounding_ops.registry.promotion import PromotionError

    return (DataPipelineError, PipelineError, PromotionError, ValueError)


def is_transient(exc: BaseException) -> bool:
    """True for S3/MLflow/network failures a later try may not meet."""
    import requests
    from botocore import exceptions as boto

    for item in _chain(exc):
        if isinstance(
            item,
            (
                boto.EndpointConnectionError,
                boto.ConnectTimeoutError,
                boto.ReadTimeoutError,
                boto.ConnectionClosedError,
                requests.ConnectionError,
                requests.Timeout,
                ConnectionError,
                TimeoutError,
            ),
        ):
            return True
        if isinstance(item, boto.ClientError):
            error = item.response.get("Error") or {}
            status = int((item.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
            if str(error.get("Code")) in TRANSIENT_S3_CODES or status >= 500:
                return True
        if type(item).__name__ in ("MlflowException", "RestException"):
            if getattr(item, "error_code", "") in TRANSIENT_MLFLOW_CODES:
                return True
            if "Max retries exceeded" in str(item) or "timed out" in str(item):
                return True
    return False


def is_data_error(exc: BaseException) -> bool:
    """True when a retry cannot help: the data or a setting must change."""
    return isinstance(exc, _data_error_types()) and not is_transient(exc)


def fail_fast(exc: BaseException) -> BaseException:
    """``AirflowFailException`` (no retry) for a data error, else ``exc`` (retried)."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    if isinstance(exc, AirflowException) or not is_data_error(exc):
        return exc
    return AirflowFailException(f"{exc} (not retried: a data error)")
