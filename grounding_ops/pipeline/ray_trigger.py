"""The trigger a multi-node ``train`` task defers to while its Ray job runs.

``TrainContainerOperator`` submits the job, then defers: no worker slot is held for the hours a
multi-node run takes. The triggerer runs ``RayJobTrigger.run``, which polls the job's status with
Ray's own ``JobSubmissionClient`` (in a thread: the client is synchronous) and fires one event
when the job ends, when the deadline (the task's ``execution_timeout``) passes (the job is
stopped first), or when the dashboard stayed unreachable for ``unreachable_s``. ``on_kill``
(mark failed / clear / mark success on the deferred task) stops the job; a triggerer restart
does not (the trigger is picked up again and keeps polling the same job).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from grounding_ops.training import ray_jobs

CLASSPATH = "grounding_ops.pipeline.ray_trigger.RayJobTrigger"


class RayJobTrigger(BaseTrigger):
    """Waits for Ray job ``job_id`` on the cluster whose dashboard is ``address``."""

    def __init__(
        self,
        address: str,
        job_id: str,
        poll_s: float = 15.0,
        deadline: float | None = None,
        unreachable_s: float = 900.0,
    ) -> None:
        super().__init__()
        self.address = address
        self.job_id = job_id
        self.poll_s = float(poll_s)
        self.deadline = deadline
        self.unreachable_s = float(unreachable_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {
            "address": self.address,
            "job_id": self.job_id,
            "poll_s": self.poll_s,
            "deadline": self.deadline,
            "unreachable_s": self.unreachable_s,
        }

    def _event(self, status: str, message: str) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_id": self.job_id, "address": self.address, "message": message})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        last_status = ""
        unreachable_since: float | None = None
        while True:
            try:
                status = await asyncio.to_thread(ray_jobs.job_status, self.address, self.job_id)
                unreachable_since = None
            except Exception as exc:  # the dashboard restarts, a network blip: keep polling a while
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                self.log.warning("Ray job %s: status unavailable (%s)", self.job_id, exc)
                if now - unreachable_since > self.unreachable_s:
                    yield self._event(
                        "UNREACHABLE",
                        f"the Ray dashboard at {self.address} did not answer for {self.unreachable_s:g} s: {exc}",
                    )
                    return
                await asyncio.sleep(self.poll_s)
                continue
            if status != last_status:
                self.log.info("Ray job %s is %s", self.job_id, status)
                last_status = status
            if status in ray_jobs.TERMINAL_STATUSES:
                yield self._event(status, f"Ray job {self.job_id} ended {status}")
                return
            if self.deadline is not None and time.time() > self.deadline:
                await asyncio.to_thread(ray_jobs.stop_job, self.address, self.job_id)
                yield self._event(
                    "TIMEOUT",
                    f"Ray job {self.job_id} was still {status} at the task's execution_timeout; it was stopped",
                )
                return
            await asyncio.sleep(self.poll_s)

    async def on_kill(self) -> None:
        self.log.info("the task was killed: stopping Ray job %s", self.job_id)
        await asyncio.to_thread(ray_jobs.stop_job, self.address, self.job_id)
