"""Alerts: a failed task of either DAG, and every promotion decision (promoted or not, with its numbers).

Where they go is one setting, the Airflow Variable ``grounding_notify`` (else the environment
variable ``GROUNDING_OPS_NOTIFY``):

- ``log`` (default): a WARNING line in the task log, nothing leaves the worker;
- ``smtp``: an email through the Airflow connection ``grounding_smtp`` (host, port, login/password;
  extra ``from`` and ``to`` (a list or comma-separated), ``security``: ``starttls``, ``ssl`` or ``none``);
- ``slack``: a message to the Slack incoming webhook of the connection ``grounding_slack`` (the
  webhook URL in its password, so it is masked, or its host).

``FailureNotifier`` and ``PromotionNotifier`` are Airflow notifiers (``on_failure_callback`` of every
task, ``on_success_callback`` of ``promote``); :func:`failure_message` and :func:`decision_message`
build the texts and :func:`send` delivers one, so each part is testable without Airflow running.
A notification that cannot be delivered is logged and never fails the task it reports on.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Mapping

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

CHANNEL_VARIABLE = "grounding_notify"
CHANNEL_ENV = "GROUNDING_OPS_NOTIFY"
SMTP_CONN_ID = "grounding_smtp"
SLACK_CONN_ID = "grounding_slack"
CHANNELS = ("log", "smtp", "slack")
SUBJECT_PREFIX = "[grounding-ops]"
_MAX_ERROR = 2000


class NotifyConfigError(ValueError):
    """The notification settings are wrong; the message says which one to fix."""


@dataclass(frozen=True)
class Message:
    subject: str
    body: str


def _fmt(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return "none"


def decision_message(result: Mapping[str, Any]) -> Message:
    """The text of a promotion decision (``promote`` task result, ``PromotionDecision.to_dict()`` inside)."""
    decision = dict(result.get("decision") or {})
    promoted = bool(result.get("promoted", decision.get("promoted")))
    name = result.get("model_name") or decision.get("model_name") or "model"
    version = result.get("version") or decision.get("version") or "?"
    metric = result.get("metric") or decision.get("metric") or "metric"
    candidate = _fmt(decision.get("candidate_value"))
    baseline_kind = decision.get("baseline") or "none"
    baseline = _fmt(decision.get("baseline_value"))
    verdict = "PROMOTED" if promoted else "NOT PROMOTED"
    subject = f"{SUBJECT_PREFIX} {verdict} {name} v{version}: {metric} {candidate} vs {baseline_kind} {baseline}"
    lines = [
        f"Decision: {verdict.lower()}",
        f"Model: {name} v{version}",
        f"Metric: {metric}",
        f"Candidate: {candidate} (evaluation run {decision.get('candidate_run_id') or '?'})",
        f"Baseline: {baseline_kind} {baseline} (evaluation run {decision.get('baseline_run_id') or 'none'})",
        f"Minimum improvement: {_fmt(decision.get('min_delta'))}",
        f"Dataset version: {decision.get('dataset_version') or '?'}",
        f"Champion: {decision.get('champion_before') or 'none'} -> {decision.get('champion_after') or 'none'}",
        f"Reason: {decision.get('reason') or ''}",
        f"Model page: {result.get('model_url') or ''}",
        f"Airflow run: {result.get('airflow_run') or ''}",
        "",
        str(result.get("summary") or ""),
    ]
    return Message(subject, "\n".join(lines).strip() + "\n")


def failure_message(context: Mapping[str, Any]) -> Message:
    """The text of a failed task, from the Airflow callback context."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = getattr(ti, "run_id", None) or context.get("run_id") or "?"
    try_number = getattr(ti, "try_number", "?")
    map_index = getattr(ti, "map_index", -1)
    task = f"{task_id}[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else task_id
    error = context.get("exception")
    error_text = f"{type(error).__name__}: {error}" if error is not None else "(no exception recorded)"
    if len(error_text) > _MAX_ERROR:
        error_text = error_text[:_MAX_ERROR] + " …"
    subject = f"{SUBJECT_PREFIX} {dag_id}.{task} failed ({run_id}, try {try_number})"
    body = (
        "\n".join(
            [
                f"DAG: {dag_id}",
                f"Task: {task}",
                f"Run: {run_id}",
                f"Try: {try_number}",
                f"Error: {error_text}",
                f"Log: {getattr(ti, 'log_url', '') or ''}",
            ]
        )
        + "\n"
    )
    return Message(subject, body)


# ----------------------------------------------------------------------------- delivery


def channel() -> str:
    """The configured channel (Variable ``grounding_notify``, else ``GROUNDING_OPS_NOTIFY``, else log)."""
    value = None
    try:
        from airflow.sdk import Variable

        value = Variable.get(CHANNEL_VARIABLE, default=None)
    except Exception:  # outside a task (no API server to ask): the environment decides
        value = None
    value = (value or os.environ.get(CHANNEL_ENV) or "log").strip().lower()
    if value not in CHANNELS:
        raise NotifyConfigError(
            f"notification channel {value!r} is unknown: set Variable {CHANNEL_VARIABLE} "
            f"to one of {', '.join(CHANNELS)}"
        )
    return value


def _recipients(value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in (value or []) if str(v).strip()]


def send_smtp(
    message: Message,
    *,
    host: str,
    port: int,
    login: str | None = None,
    password: str | None = None,
    sender: str,
    recipients: list[str],
    security: str = "starttls",
    timeout: float = 30,
) -> None:
    """Send ``message`` as an email (``security``: starttls, ssl or none)."""
    if not recipients:
        raise NotifyConfigError(f"connection {SMTP_CONN_ID} names no recipient: set extra 'to'")
    if security not in ("starttls", "ssl", "none"):
        raise NotifyConfigError(f"connection {SMTP_CONN_ID}: extra 'security' must be starttls, ssl or none")
    email = EmailMessage()
    email["Subject"], email["From"], email["To"] = message.subject, sender, ", ".join(recipients)
    email.set_content(message.body)
    context = ssl.create_default_context()
    if security == "ssl":
        server: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    else:
        server = smtplib.SMTP(host, port, timeout=timeout)
    with server:
        if security == "starttls":
            server.starttls(context=context)
        if login and password:
            server.login(login, password)
        server.send_message(email)


def send_slack(message: Message, webhook_url: str, *, timeout: float = 30) -> None:
    """Post ``message`` to a Slack incoming webhook."""
    if not webhook_url.startswith(("https://", "http://")):
        raise NotifyConfigError(f"connection {SLACK_CONN_ID}: the webhook URL must be http(s)")
    data = json.dumps({"text": f"*{message.subject}*\n```{message.body}```"}).encode()
    request = urllib.request.Request(
        webhook_url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (configured URL)
        if response.status >= 300:
            raise RuntimeError(f"Slack webhook answered {response.status}")


def send(message: Message, channel_name: str | None = None) -> str:
    """Deliver ``message`` on the configured channel; returns the channel used."""
    from airflow.sdk import BaseHook

    name = channel_name or channel()
    if name == "log":
        log.warning("%s\n%s", message.subject, message.body)
        return name
    if name == "smtp":
        conn = BaseHook.get_connection(SMTP_CONN_ID)
        extra = conn.extra_dejson
        send_smtp(
            message,
            host=conn.host or "localhost",
            port=int(conn.port or 587),
            login=conn.login,
            password=conn.password,
            sender=str(extra.get("from") or conn.login or "grounding-ops@localhost"),
            recipients=_recipients(extra.get("to")),
            security=str(extra.get("security") or "starttls"),
        )
        return name
    conn = BaseHook.get_connection(SLACK_CONN_ID)
    send_slack(message, conn.password or conn.host or "")
    return name


def deliver(message: Message) -> None:
    """:func:`send`, logging instead of raising: an alert never fails the task it reports on."""
    try:
        used = send(message)
        log.info("notification sent (%s): %s", used, message.subject)
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        log.error("could not send the notification %r: %s: %s", message.subject, type(exc).__name__, exc)


class FailureNotifier(BaseNotifier):
    """``on_failure_callback``: a failed task (after its retries) of grounding_data or grounding_train."""

    template_fields = ()

    def notify(self, context: Any) -> None:
        deliver(failure_message(context))


class PromotionNotifier(BaseNotifier):
    """``on_success_callback`` of ``promote``: every decision, promoted or not, with both numbers."""

    template_fields = ()

    def notify(self, context: Any) -> None:
        ti = context["ti"]
        result = ti.xcom_pull(task_ids=ti.task_id)
        if not isinstance(result, Mapping):
            log.error("promote returned no decision to notify about (%r)", type(result).__name__)
            return
        deliver(decision_message({**result, "airflow_run": f"{ti.dag_id}/{ti.run_id}"}))
