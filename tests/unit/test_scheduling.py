"""The scheduler's executor: a job cancelled by a scheduler standing down is not an error."""

from __future__ import annotations

import asyncio
import logging

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from shared.scheduling import BoundExecutor

started = asyncio.Event()


async def sends_a_text() -> None:
    started.set()
    await asyncio.sleep(3600)  # a provider call still under way


async def test_a_job_cut_short_by_standing_down_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes: list[int] = []
    scheduler = AsyncIOScheduler(executors={"default": BoundExecutor({})}, timezone="UTC")
    scheduler.add_listener(
        lambda evt: outcomes.append(evt.code) if isinstance(evt, JobExecutionEvent) else None,
        EVENT_JOB_ERROR | EVENT_JOB_EXECUTED,
    )
    scheduler.add_job(sends_a_text, id="s1:confirmation")
    with caplog.at_level(logging.INFO):
        scheduler.start()
        await asyncio.wait_for(started.wait(), 5)
        scheduler.shutdown(wait=False)  # what standing down does: running jobs cancelled
        for _ in range(50):
            if outcomes:
                break
            await asyncio.sleep(0.02)
    assert outcomes == [EVENT_JOB_EXECUTED]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
