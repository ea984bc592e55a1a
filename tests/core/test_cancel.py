"""``_cancel.CancelScope`` (asyncio-native scope) and ``disconnect.call_until_disconnect``."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from mesh_images_asgi._asgi.disconnect import LISTEN_AFTER, call_until_disconnect
from mesh_images_asgi._core.asgi import Message
from mesh_images_asgi._core.cancel import CancelScope

pytestmark = pytest.mark.anyio


def _now() -> float:
    return asyncio.get_running_loop().time()


async def test_a_deadline_ends_the_block_quietly() -> None:
    reached = False
    with CancelScope(_now() + 0.01) as scope:
        await asyncio.sleep(10)
        reached = True
    assert scope.cancelled_caught
    assert not reached
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_timeout_counts_from_entry() -> None:
    scope = CancelScope(timeout=0.05)
    assert scope.deadline is None  # not resolved before entry
    await asyncio.sleep(0.1)  # time before entering does not count
    entered = _now()
    with scope:
        assert scope.loop is asyncio.get_running_loop()
        assert scope.deadline is not None
        assert entered <= scope.deadline - 0.05 <= _now()
        await asyncio.sleep(10)
    assert scope.cancelled_caught
    assert 0.04 <= _now() - entered < 1


async def test_a_timeout_is_resolved_when_cancelled_before_entry() -> None:
    scope = CancelScope(timeout=5)
    scope.cancel()
    with scope:
        assert scope.deadline is not None
        await asyncio.sleep(10)
    assert scope.cancelled_caught


def test_a_scope_takes_a_deadline_or_a_timeout() -> None:
    with pytest.raises(ValueError, match="not both"):
        CancelScope(1.0, timeout=1.0)
    with pytest.raises(RuntimeError, match="not been entered"):
        _ = CancelScope().loop
    assert CancelScope(12.5).deadline == 12.5


async def test_a_block_that_finishes_in_time_is_not_cancelled() -> None:
    with CancelScope(_now() + 10) as scope:
        await asyncio.sleep(0)
    assert not scope.cancelled_caught
    await asyncio.sleep(0.01)  # no stray cancellation arrives later


async def test_cancel_from_another_task() -> None:
    with CancelScope() as scope:
        asyncio.get_running_loop().call_later(0.01, scope.cancel)
        await asyncio.sleep(10)
    assert scope.cancelled_caught
    assert scope.cancel_called


async def test_cancel_before_entering_cancels_at_once() -> None:
    scope = CancelScope()
    scope.cancel()
    with scope:
        await asyncio.sleep(10)
    assert scope.cancelled_caught


async def test_cancel_after_leaving_does_nothing() -> None:
    with CancelScope() as scope:
        pass
    scope.cancel()
    await asyncio.sleep(0.01)
    assert not scope.cancelled_caught


async def test_a_timeout_error_from_the_block_goes_through() -> None:
    with pytest.raises(TimeoutError), CancelScope(_now() + 10):
        raise TimeoutError
    with pytest.raises(ValueError, match="boom"), CancelScope(_now() + 10):
        raise ValueError("boom")


async def test_an_outer_cancellation_goes_through_the_inner_scope() -> None:
    inner = CancelScope()
    with CancelScope() as outer:
        asyncio.get_running_loop().call_later(0.01, outer.cancel)
        with inner:
            await asyncio.sleep(10)
    assert outer.cancelled_caught
    assert not inner.cancelled_caught


async def test_the_inner_deadline_is_caught_by_the_inner_scope() -> None:
    with CancelScope(_now() + 10) as outer:
        with CancelScope(_now() + 0.01) as inner:
            await asyncio.sleep(10)
        await asyncio.sleep(0)
    assert inner.cancelled_caught
    assert not outer.cancelled_caught


async def test_an_anyio_scope_around_it_still_cancels() -> None:
    inner = CancelScope()
    with anyio.move_on_after(0.01) as outer:
        with inner:
            await asyncio.sleep(10)
    assert outer.cancelled_caught
    assert not inner.cancelled_caught


async def test_a_task_cancelled_from_outside_stays_cancelled() -> None:
    async def work() -> None:
        with CancelScope(_now() + 10):
            await asyncio.sleep(10)

    task = asyncio.get_running_loop().create_task(work())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class _Client:
    """``receive`` after the body: nothing until ``leave()``, then ``http.disconnect``."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.waiting = 0

    async def receive(self) -> Message:
        self.waiting += 1
        try:
            await self.gone.wait()
        finally:
            self.waiting -= 1
        return {"type": "http.disconnect"}


async def test_call_until_disconnect_returns_the_result_and_stops_listening() -> None:
    client = _Client()

    listened = 0

    async def work() -> str:
        nonlocal listened
        await asyncio.sleep(LISTEN_AFTER * 2)
        listened = client.waiting
        return "done"

    assert await call_until_disconnect(client.receive, work) == "done"
    await asyncio.sleep(0)
    assert listened == 1
    assert client.waiting == 0


async def test_quick_work_never_listens() -> None:
    client = _Client()

    async def work() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await call_until_disconnect(client.receive, work) == "done"
    await asyncio.sleep(LISTEN_AFTER * 2)
    assert client.waiting == 0


async def test_a_disconnect_before_the_listener_starts_is_seen_when_it_does() -> None:
    client = _Client()
    client.gone.set()

    async def work() -> str:
        await asyncio.sleep(10)
        return "never"

    started = _now()
    assert await call_until_disconnect(client.receive, work) is None
    assert _now() - started < LISTEN_AFTER + 0.05


async def test_call_until_disconnect_cancels_the_work_on_disconnect() -> None:
    client = _Client()
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    asyncio.get_running_loop().call_later(0.01, client.gone.set)
    started = _now()
    assert await call_until_disconnect(client.receive, work) is None
    assert cancelled.is_set()
    assert _now() - started < 1


async def test_call_until_disconnect_passes_errors_on() -> None:
    client = _Client()

    async def work() -> str:
        raise ValueError("upstream broke")

    with pytest.raises(ValueError, match="upstream broke"):
        await call_until_disconnect(client.receive, work)


async def test_a_failing_receive_counts_as_a_disconnect() -> None:
    async def receive() -> Message:
        raise OSError("connection lost")

    async def work() -> str:
        await asyncio.sleep(10)
        return "never"

    assert await call_until_disconnect(receive, work) is None


async def test_a_deadline_already_past_cancels_at_the_first_await() -> None:
    with CancelScope(_now() - 1) as scope:
        await asyncio.sleep(10)
    assert scope.cancelled_caught


async def test_cancel_twice_is_one_cancellation() -> None:
    with CancelScope() as scope:
        scope.cancel()
        scope.cancel()
        await asyncio.sleep(10)
    assert scope.cancelled_caught
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)  # no cancellation left pending


async def test_a_scope_is_entered_once() -> None:
    scope = CancelScope()
    with scope:
        pass
    with pytest.raises(RuntimeError), scope:
        pass
