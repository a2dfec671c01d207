"""One shape for every background loop: run a step when woken or every so often, back off
when it fails, stop cleanly.

The outbox relay, the webhook dispatcher, the calendar push loop, the planner and the
group commit all "wait for a reason, do a batch, repeat". Each is a :class:`Worker` with a
``step``; the worker owns the task, the wake-up event, the poll and the backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

#: What a step answers: ``True`` to run again at once (a full batch, more is waiting), a
#: number of seconds to run again at the latest after that long, or ``None``/``False`` to
#: wait for a wake-up or the poll.
StepResult = bool | float | None
Step = Callable[[], Awaitable[StepResult]]
#: The longest a quiet safety-net poll waits between looks (see ``idle_poll_seconds``).
IDLE_POLL_SECONDS = 30.0


class Worker:
    """A background task around ``step``.

    ``poll_seconds`` is how long it waits without a wake-up (``None``: only a wake-up or
    the step's own answer runs it again). With ``idle_poll_seconds`` the wait doubles after
    each poll that no wake-up cut short, up to that long, and is back to ``poll_seconds``
    at the next wake-up: for a loop every commit wakes, whose poll is only a safety net, a
    quiet service stops looking every few seconds. A step that raises is retried after
    ``backoff_seconds``, doubling to ``backoff_max_seconds``; the worker never dies of it.
    """

    def __init__(
        self,
        name: str,
        step: Step,
        *,
        poll_seconds: float | None = 1.0,
        idle_poll_seconds: float | None = None,
        backoff_seconds: float = 0.2,
        backoff_max_seconds: float = 5.0,
    ) -> None:
        self.name = name
        self._step = step
        self.poll_seconds = poll_seconds
        self._idle_poll = idle_poll_seconds
        #: The wait of the next poll (``poll_seconds`` stretched while nothing wakes it).
        self._poll: float | None = poll_seconds
        self._backoff = backoff_seconds
        self._backoff_max = backoff_max_seconds
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
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
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end. A cancel can be lost on the way (Python
        3.11's ``asyncio.wait_for``, which nats-py uses, returns a result that arrived in
        the same turn and drops the cancel), so the loop also ends at its next look at
        ``_stopping``, woken for it; a stop that is itself cancelled is not held up."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wakeup.set()
        task.cancel()
        await asyncio.wait({task})

    async def _run(self) -> None:
        while not self._stopping:
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
                self._poll = self.poll_seconds
                await asyncio.sleep(0)  # let the rest of the loop in between batches
                continue
            timeout = self._poll
            if isinstance(answer, int | float) and not isinstance(answer, bool):
                timeout = max(0.0, answer) if timeout is None else min(timeout, max(0.0, answer))
            try:
                async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancel
                    await self._wakeup.wait()
                self._poll = self.poll_seconds
            except TimeoutError:
                self._stretch_poll()

    def _stretch_poll(self) -> None:
        if self._idle_poll is not None and self._poll is not None:
            self._poll = min(self._poll * 2, max(self._idle_poll, self._poll))
