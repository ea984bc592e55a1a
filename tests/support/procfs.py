"""What a process holds, read from /proc (Linux): TCP connections by state, RSS, event-loop tasks.

Gateways and emulators in the tests run in threads of the test process, so "the gateway's sockets
to the emulators" are this process's TCP sockets whose *remote* port is an emulator's port.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import os
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

__all__ = [
    "LoopProbe",
    "connections_to",
    "live_rss_bytes",
    "peak_rss_bytes",
    "rss_bytes",
    "task_count",
]

# /proc/net/tcp "st" column
_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def _socket_inodes(pid: int | str) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connections_to(ports: Collection[int], pid: int | str = "self") -> Counter[str]:
    """States of ``pid``'s open TCP sockets connected to one of ``ports`` (on any address)."""
    inodes = _socket_inodes(pid)
    states: Counter[str] = Counter()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in ports and fields[9] in inodes:
                states[_STATES.get(fields[3], fields[3])] += 1
    return states


def rss_bytes(pid: int | str = "self") -> int:
    return _status_bytes(pid, "VmRSS:")


def live_rss_bytes() -> int:
    """This process's RSS once garbage is collected and the C allocator has handed its free
    pages back (glibc's ``malloc_trim``): what is held alive, without what glibc keeps after a
    peak. In the whole suite under load, the fault suite's raw RSS grew by 61 to 66 MiB while
    this grew by none: a leak check on raw RSS measures how busy the machine was."""
    gc.collect()
    _malloc_trim()
    return rss_bytes()


def _malloc_trim() -> None:
    if (trim := _trim_function()) is not None:
        trim(0)


@functools.cache
def _trim_function() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig``); None on
    other C libraries, which keep less or have no such call."""
    name = ctypes.util.find_library("c")
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)
    return trim if name else None


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The most resident memory ``pid`` has held (``VmHWM``)."""
    return _status_bytes(pid, "VmHWM:")


def _status_bytes(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key}")


class LoopProbe:
    """An ASGI wrapper remembering the event loop the app runs in (a server's thread)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


def task_count(loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> int:
    """Tasks alive in ``loop`` (another thread's), not counting the one that counts them."""

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout)
