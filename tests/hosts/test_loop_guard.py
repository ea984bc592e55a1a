"""``LoopGuard``: the hook that closes lazily created resources when their event loop ends."""

from __future__ import annotations

import asyncio
import gc

from mesh_images_asgi._asgi.loop_guard import LoopGuard


class Resource:
    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        await asyncio.sleep(0)  # a real await, as closing a client has
        self.closed += 1


def test_closes_when_the_loop_shuts_down() -> None:
    resource = Resource()
    guards: list[LoopGuard | None] = []

    async def main() -> None:
        guards.append(LoopGuard.for_running_loop(resource.aclose))

    asyncio.run(main())
    assert guards[0] is not None
    assert resource.closed == 1


def test_disarmed_guard_does_not_close() -> None:
    resource = Resource()

    async def main() -> LoopGuard | None:
        guard = LoopGuard.for_running_loop(resource.aclose)
        assert guard is not None
        guard.disarm()
        guard.disarm()  # twice is fine
        return guard

    asyncio.run(main())
    assert resource.closed == 0


def test_a_dropped_guard_closes_on_its_running_loop() -> None:
    resource = Resource()

    async def main() -> None:
        LoopGuard.for_running_loop(resource.aclose)  # nobody keeps it
        gc.collect()
        for _ in range(3):
            await asyncio.sleep(0)
        assert resource.closed == 1

    asyncio.run(main())
    assert resource.closed == 1


def test_no_guard_outside_a_loop() -> None:
    assert LoopGuard.for_running_loop(Resource().aclose) is None
