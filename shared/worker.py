"""One shape for every background loop: run a step when woken or every so often, back off
when it fails, stop cleanly.

The outbox relay, the webhook dispatcher, the calendar push loop, the planner and the
group commit all "wait for a reason, do a batch, repeat". Each is a :class:`Worker` with a
``step``; the worker owns the task, the wake-up event, the poll and the backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

#: What a step answers: ``True`` to run again at once (a full batch, more is waiting), a
#: number of seconds to run again at the latest after that long, or ``None``/``False`` to
#: wait for a wake-up or the poll.
StepResult = bool | float | None
Step = Callable[[], Awaitable[StepResult]]


class Worker:
    """A background task around ``step``.

    ``poll_seconds`` is how long it waits without a wake-up (``None``: only a wake-up or
    the step's own answer runs it again). A step that raises is retried after
    ``backoff_seconds``, doubling to ``backoff_max_seconds``; the worker never dies of it.
    """

    def __init__(
        self,
        name: str,
        step: Step,
        *,
        poll_seconds: float | None = 1.0,
        backoff_seconds: float = 0.2,
        backoff_max_seconds: float = 5.0,
    ) -> None:
        self.name = name
        self._step = step
        self.poll_seconds = poll_seconds
        self._backoff = backoff_seconds
        self._backoff_max = backoff_max_seconds
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Run the step soon (cheap, callable from any code on the loop, any number of
        times: wake-ups before the step runs count once)."""
        self._wakeup.set()

    def start(self) -> None:
        if not self.running:
            self._wakeup = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                answer = await self._step()
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                delay = min(self._backoff * 2 ** (self.failures - 1), self._backoff_max)
                log.warning(
                    "worker.step_failed",
                    worker=self.name,
                    error=type(exc).__name__,
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            if answer is True:
                await asyncio.sleep(0)  # let the rest of the loop in between batches
                continue
            timeout = self.poll_seconds
            if isinstance(answer, int | float) and not isinstance(answer, bool):
                timeout = max(0.0, answer) if timeout is None else min(timeout, max(0.0, answer))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
