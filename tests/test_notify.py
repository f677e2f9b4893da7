"""Alerts of both DAGs, delivered to a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import email
import json
import socket
from email.policy import default as default_policy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


class _Sink:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's handler name)
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.content, policy=default_policy))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def smtp_sink(monkeypatch: pytest.MonkeyPatch):
    """A real SMTP server on 127.0.0.1, and the notification settings pointing at it."""
    from aiosmtpd.controller import Controller

    sink = _Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("GROUNDING_OPS_NOTIFY", "smtp")
    monkeypatch.setenv(
        "AIRFLOW_CONN_GROUNDING_SMTP",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "extra": {
                    "from": "airflow@grounding.test",
                    "to": "ml-team@grounding.test, oncall@grounding.test",
                    "security": "none",
                },
            }
        ),
    )
    try:
        yield sink
    finally:
        controller.stop()


def _result(promoted: bool) -> dict[str, Any]:
    decision = {
        "promoted": promoted,
        "model_name": "grounding-model",
        "metric": "acc_at_0_5",
        "min_delta": 0.01,
        "candidate_run_id": "cand123",
        "candidate_value": 0.6123 if promoted else 0.5049,
        "baseline": "champion",
        "baseline_value": 0.5,
        "baseline_run_id": "champ456",
        "champion_before": "3",
        "champion_after": "4" if promoted else "3",
        "version": "4",
        "dataset_version": "ds-abc",
        "reason": "r",
    }
    return {
        "model_name": "grounding-model",
        "version": "4",
        "promoted": promoted,
        "decision": decision,
        "metric": "acc_at_0_5",
        "summary": "summary line",
        "model_url": "http://127.0.0.1:5310/#/models/x",
    }


class _TaskInstance(SimpleNamespace):
    def xcom_pull(self, task_ids: str) -> Any:
        return self.returned if task_ids == self.task_id else None


@pytest.mark.parametrize("promoted", [True, False])
def test_every_promotion_decision_is_mailed_with_its_numbers(smtp_sink, promoted: bool) -> None:
    from grounding_ops.pipeline.notify import PromotionNotifier

    ti = _TaskInstance(
        dag_id="grounding_train", run_id="scheduled__2026", task_id="promote", map_index=-1, returned=_result(promoted)
    )
    PromotionNotifier()({"ti": ti})
    [message] = smtp_sink.messages
    subject, body = message["Subject"], message.get_content()
    verdict = "PROMOTED" if promoted else "NOT PROMOTED"
    assert subject.startswith(f"[grounding-ops] {verdict} grounding-model v4")
    assert ("0.6123" if promoted else "0.5049") in subject and "champion 0.5000" in subject
    assert "Minimum improvement: 0.0100" in body and "Dataset version: ds-abc" in body
    assert f"Champion: 3 -> {'4' if promoted else '3'}" in body and "grounding_train/scheduled__2026" in body
    assert smtp_sink.envelopes[0].rcpt_tos == ["ml-team@grounding.test", "oncall@grounding.test"]


def test_a_failed_task_is_mailed(smtp_sink) -> None:
    from grounding_ops.pipeline.notify import FailureNotifier

    ti = SimpleNamespace(
        dag_id="grounding_data",
        run_id="manual__bad",
        task_id="export",
        try_number=3,
        map_index=-1,
        log_url="http://127.0.0.1:8080/dags/grounding_data/runs/manual__bad",
    )
    FailureNotifier()({"ti": ti, "exception": RuntimeError("too many rows quarantined: see quarantine.jsonl")})
    [message] = smtp_sink.messages
    assert message["Subject"] == "[grounding-ops] grounding_data.export failed (manual__bad, try 3)"
    assert (
        "too many rows quarantined" in message.get_content() and "Log: http://127.0.0.1:8080" in message.get_content()
    )


def test_an_unreachable_mail_server_never_fails_the_task(monkeypatch, caplog) -> None:
    from grounding_ops.pipeline.notify import FailureNotifier

    monkeypatch.setenv("GROUNDING_OPS_NOTIFY", "smtp")
    monkeypatch.setenv(
        "AIRFLOW_CONN_GROUNDING_SMTP",
        json.dumps(
            {"conn_type": "smtp", "host": "127.0.0.1", "port": _free_port(), "extra": {"to": "x@y", "security": "none"}}
        ),
    )
    FailureNotifier()({"ti": SimpleNamespace(dag_id="d", run_id="r", task_id="t", try_number=1, map_index=-1)})
    assert "could not send the notification" in caplog.text


def test_log_channel_is_the_default_and_unknown_channels_are_refused(monkeypatch, caplog) -> None:
    from grounding_ops.pipeline.notify import NotifyConfigError, channel, decision_message, send

    monkeypatch.delenv("GROUNDING_OPS_NOTIFY", raising=False)
    assert send(decision_message(_result(False))) == "log"
    assert "NOT PROMOTED grounding-model v4" in caplog.text
    monkeypatch.setenv("GROUNDING_OPS_NOTIFY", "pager")
    with pytest.raises(NotifyConfigError, match="grounding_notify"):
        channel()


def test_both_dags_alert_on_failure_and_promote_on_every_decision() -> None:
    from airflow.dag_processing.dagbag import DagBag

    from grounding_ops.pipeline.notify import FailureNotifier, PromotionNotifier

    bag = DagBag(str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    for dag_id in ("grounding_data", "grounding_train"):
        for task in bag.dags[dag_id].tasks:
            callbacks = task.on_failure_callback or []
            assert any(isinstance(c, FailureNotifier) for c in callbacks), f"{dag_id}.{task.task_id}"
    promote = bag.dags["grounding_train"].get_task("promote")
    assert any(isinstance(c, PromotionNotifier) for c in promote.on_success_callback or [])
