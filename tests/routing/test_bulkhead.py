"""The per-provider bulkhead: a concurrency limit with a bounded, first-come queue."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from mesh_images_asgi._core.bulkhead import Bulkhead
from mesh_images_asgi._core.errors import ProviderNotAvailable


@pytest.mark.anyio
async def test_limit_then_queue_then_503_with_retry_after() -> None:
    bulkhead = Bulkhead("OpenAI", limit=1, queue=1)
    release = anyio.Event()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with bulkhead.slot():
            order.append(name)
            await release.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(hold, "first")
        await anyio.sleep(0.01)
        group.start_soon(hold, "queued")
        await anyio.sleep(0.01)
        assert (bulkhead.active, bulkhead.waiting) == (1, 1)
        with pytest.raises(ProviderNotAvailable) as raised:
            await hold("refused")
        release.set()
    assert order == ["first", "queued"]
    assert dict(raised.value.response_headers())[b"retry-after"] == b"1"
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_queue_and_frees_nothing_it_did_not_hold() -> None:
    bulkhead = Bulkhead("OpenAI", limit=1, queue=2)
    release = anyio.Event()

    async def hold() -> None:
        async with bulkhead.slot():
            await release.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(hold)
        await anyio.sleep(0.01)
        with anyio.move_on_after(0.02):
            await hold()
        assert (bulkhead.active, bulkhead.waiting) == (1, 0)
        release.set()
    assert bulkhead.active == 0


@pytest.mark.anyio
async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    bulkhead = Bulkhead("OpenAI", limit=1, queue=2)
    served: list[str] = []
    holder = bulkhead.slot()
    await holder.__aenter__()
    with anyio.fail_after(2):  # a lost slot would leave "next" waiting forever
        await _hand_over_to_a_cancelled_waiter(bulkhead, holder, served)
    assert served == ["next"]
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


async def _hand_over_to_a_cancelled_waiter(
    bulkhead: Bulkhead, holder: AbstractAsyncContextManager[bool], served: list[str]
) -> None:
    async with anyio.create_task_group() as group:
        doomed = anyio.CancelScope()

        async def wait_then_cancelled() -> None:
            with doomed:
                async with bulkhead.slot():
                    served.append("doomed")

        async def next_in_line() -> None:
            async with bulkhead.slot():
                served.append("next")

        group.start_soon(wait_then_cancelled)
        await anyio.sleep(0.01)
        group.start_soon(next_in_line)
        await anyio.sleep(0.01)
        doomed.cancel()  # the first waiter is being cancelled...
        await holder.__aexit__(None, None, None)  # ...when the slot is handed to it
