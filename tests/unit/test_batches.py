"""Calls that arrive together are handled together, and each caller gets its own answer:
one caller's bad item never fails another's, and a stop answers what was queued."""

from __future__ import annotations

import asyncio

import pytest

from shared.batches import Batches


async def test_items_sent_together_are_handled_in_one_batch_each_with_its_own_answer() -> None:
    seen: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        seen.append(items)
        return [2 * i for i in items]

    batches: Batches[int, int] = Batches("doubling", double, max_batch=100)
    batches.start()
    try:
        answers = await asyncio.gather(*(batches.run(i) for i in range(10)))
    finally:
        await batches.stop()
    assert answers == [2 * i for i in range(10)]
    assert len(seen) < 10 and sorted(i for batch in seen for i in batch) == list(range(10))


async def test_a_bad_item_fails_its_own_caller_only() -> None:
    async def write(items: list[int]) -> list[int]:
        if 13 in items:  # one item trips a constraint: the whole transaction fails
            raise ValueError("13 is refused")
        return items

    batches: Batches[int, int] = Batches("writes", write, max_batch=100)
    batches.start()
    try:
        answers = await asyncio.gather(
            *(batches.run(i) for i in (11, 12, 13, 14)), return_exceptions=True
        )
    finally:
        await batches.stop()
    assert answers[:2] == [11, 12] and answers[3] == 14
    assert isinstance(answers[2], ValueError)


async def test_a_stop_answers_what_was_queued_before_it() -> None:
    release = asyncio.Event()

    async def slow(items: list[int]) -> list[int]:
        await release.wait()
        return items

    batches: Batches[int, int] = Batches("slow", slow, max_batch=2)
    batches.start()
    callers = [asyncio.create_task(batches.run(i)) for i in range(5)]
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(batches.stop(drain_seconds=5))
    await asyncio.sleep(0.05)
    release.set()
    await stopping
    assert [await c for c in callers] == list(range(5))


async def test_what_a_stop_could_not_answer_in_time_gets_an_error() -> None:
    async def never(items: list[int]) -> list[int]:
        await asyncio.Event().wait()
        return items

    batches: Batches[int, int] = Batches("stuck", never, max_batch=1)
    batches.start()
    first, second = (asyncio.create_task(batches.run(i)) for i in range(2))
    await asyncio.sleep(0.05)
    await batches.stop(drain_seconds=0.2)
    with pytest.raises(asyncio.CancelledError):
        await first  # the batch being handled is cancelled with the worker
    with pytest.raises(RuntimeError, match="stopping"):
        await second
