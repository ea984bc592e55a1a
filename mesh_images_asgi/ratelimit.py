"""Per-key request limits: fixed windows per UTC minute (``rpm``) and per UTC day (``rpd``).

A request is counted only when every window has room, so a refused request costs nothing. Two
``Limiter``s: ``MemoryLimiter`` (one process) and ``RedisLimiter``, whose counters live in Redis
and are checked and bumped by one Lua script, atomically, so that the limits hold in total
across any number of gateway processes and machines sharing one Redis.

When Redis cannot be reached the configured policy applies, logged once per outage:

* fail open (the default): each process goes on limiting on its own, in memory, so a key can
  spend at most its limits once per process while Redis is away, never without bound;
* fail closed: 503 ``service_unavailable`` until Redis answers again.

Redis is tried again at most once a second while it is away, so an outage adds no latency.
Windows are numbered from each gateway's clock (keep clocks in sync with NTP).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .auth import GatewayKey
from .errors import RateLimitExceeded, ServiceUnavailable
from .redact import redact

__all__ = [
    "Decision",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
    "Window",
    "create_limiter",
    "enforce",
    "windows_of",
]

logger = logging.getLogger("mesh_images_asgi")

MINUTE = 60
DAY = 86_400
_PREFIX = "mesh-images:rl"
_RETRY_INTERVAL = 1.0


@dataclass(frozen=True)
class Window:
    """``limit`` requests per ``seconds`` (windows start at multiples of ``seconds`` UTC)."""

    name: str
    seconds: int
    limit: int


def windows_of(key: GatewayKey) -> tuple[Window, ...]:
    """The windows a key's ``rpm`` and ``rpd`` set."""
    windows = []
    if key.rpm is not None:
        windows.append(Window("RPM", MINUTE, key.rpm))
    if key.rpd is not None:
        windows.append(Window("RPD", DAY, key.rpd))
    return tuple(windows)


def _duration(seconds: float) -> str:
    """OpenAI's form of a reset time: ``45s``, ``1m5s``, ``3h0m12s``."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit, told by its binding window."""

    allowed: bool
    window: Window
    remaining: int
    reset_seconds: float

    @classmethod
    def from_counts(
        cls, windows: Sequence[Window], counts: Sequence[int], allowed: bool, now: float
    ) -> Decision:
        """Binding window: the full one that resets last when refused, else the tightest."""
        rows = [
            (window, max(0, window.limit - count), window.seconds - now % window.seconds)
            for window, count in zip(windows, counts, strict=True)
        ]
        if allowed:
            window, remaining, reset = min(rows, key=lambda row: (row[1], row[2]))
        else:
            window, remaining, reset = max(
                (row for row in rows if row[1] == 0), key=lambda row: row[2]
            )
        return cls(allowed, window, remaining, reset)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit-requests", str(self.window.limit).encode()),
            (b"x-ratelimit-remaining-requests", str(self.remaining).encode()),
            (b"x-ratelimit-reset-requests", _duration(self.reset_seconds).encode()),
        ]


class Limiter(Protocol):
    """Counts hits of ``bucket`` in ``windows`` at time ``now`` (seconds since the epoch)."""

    async def hit(self, bucket: str, windows: Sequence[Window], now: float) -> Decision: ...

    async def aclose(self) -> None: ...


class MemoryLimiter:
    """Fixed windows in this process's memory: one counter per bucket and window."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], tuple[int, int]] = {}

    async def hit(self, bucket: str, windows: Sequence[Window], now: float) -> Decision:
        numbers = [int(now // window.seconds) for window in windows]
        counts = []
        for window, number in zip(windows, numbers, strict=True):
            stored = self._counters.get((bucket, window.name))
            counts.append(stored[1] if stored is not None and stored[0] == number else 0)
        allowed = all(count < window.limit for count, window in zip(counts, windows, strict=True))
        if allowed:
            counts = [count + 1 for count in counts]
            for window, number, count in zip(windows, numbers, counts, strict=True):
                self._counters[(bucket, window.name)] = (number, count)
        return Decision.from_counts(windows, counts, allowed, now)

    async def aclose(self) -> None:
        self._counters.clear()


# KEYS: one counter per window. ARGV: limit and TTL of each window, in KEYS order.
# Returns {allowed (0/1), count of each window (after the hit when allowed)}.
_HIT = """
local counts, allowed = {}, 1
for i = 1, #KEYS do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if counts[i] >= tonumber(ARGV[2 * i - 1]) then allowed = 0 end
end
if allowed == 1 then
  for i = 1, #KEYS do
    counts[i] = redis.call('INCR', KEYS[i])
    if counts[i] == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i]) end
  end
end
table.insert(counts, 1, allowed)
return counts
"""


class RedisLimiter:
    """Fixed windows in Redis, shared by every gateway using the same Redis.

    ``fail_open``: what to do while Redis cannot be reached (see the module docstring).
    """

    def __init__(self, url: str, *, fail_open: bool, timeout: float = 0.5) -> None:
        try:
            from redis import asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise RuntimeError(
                "MESH_IMAGES_REDIS_URL needs the redis client: "
                "pip install 'mesh-images-asgi[redis]'"
            ) from None
        # One immediate retry (a pooled connection the server closed), then the policy: the
        # client's default of ten retries with backoff would stall every request in an outage.
        self._client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._script: Any = self._client.register_script(_HIT)
        self._unreachable = (RedisError, OSError)
        self._fail_open = fail_open
        self._fallback = MemoryLimiter()
        self._down_since: float | None = None
        self._next_try = 0.0

    async def hit(self, bucket: str, windows: Sequence[Window], now: float) -> Decision:
        if self._down_since is None or time.monotonic() >= self._next_try:
            try:
                reply = await self._script(
                    keys=[
                        f"{_PREFIX}:{{{bucket}}}:{window.name}:{int(now // window.seconds)}"
                        for window in windows
                    ],
                    args=[value for w in windows for value in (w.limit, w.seconds + MINUTE)],
                )
            except self._unreachable as exc:  # refused, timed out, auth failed, read-only...
                self._went_down(exc)
            else:
                self._came_back()
                counts = [int(count) for count in reply[1:]]
                return Decision.from_counts(windows, counts, bool(reply[0]), now)
        if not self._fail_open:
            raise ServiceUnavailable(
                "Rate limiting is unavailable, so requests are refused; try again shortly.",
                retry_after_seconds=_RETRY_INTERVAL,
            )
        return await self._fallback.hit(bucket, windows, now)

    def _went_down(self, exc: Exception) -> None:
        self._next_try = time.monotonic() + _RETRY_INTERVAL
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        policy = (
            "limiting in memory per process (fail open)"
            if self._fail_open
            else "refusing rate-limited requests (fail closed)"
        )
        logger.warning(
            "mesh-images: Redis is unavailable (%s: %s); %s until it is back",
            type(exc).__name__,
            redact(str(exc))[:200],
            policy,
        )

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        outage = time.monotonic() - self._down_since
        self._down_since = None
        self._fallback = MemoryLimiter()
        logger.warning("mesh-images: Redis is available again after %.1f s", outage)

    async def aclose(self) -> None:
        await self._client.aclose()


def create_limiter(redis_url: str | None, *, fail_open: bool) -> Limiter:
    """A ``RedisLimiter`` when a Redis URL is configured, else a ``MemoryLimiter``."""
    if redis_url:
        return RedisLimiter(redis_url, fail_open=fail_open)
    return MemoryLimiter()


async def enforce(
    limiter: Limiter, key: GatewayKey, now: float | None = None
) -> list[tuple[bytes, bytes]]:
    """Count one request of ``key``: its ``x-ratelimit-*`` headers, or 429 past a limit."""
    windows = windows_of(key)
    if not windows:
        return []
    decision = await limiter.hit(key.label, windows, time.time() if now is None else now)
    headers = decision.headers()
    if not decision.allowed:
        unit = "minute" if decision.window.seconds == MINUTE else "day"
        raise RateLimitExceeded(
            f"{decision.window.name} limit of {decision.window.limit} requests per {unit} "
            "exceeded for this API key.",
            retry_after_seconds=decision.reset_seconds,
            headers=headers,
        )
    return headers
