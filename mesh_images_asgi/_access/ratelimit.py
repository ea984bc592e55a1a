"""Per-key request limits: fixed windows per UTC minute (``rpm``) and per UTC day (``rpd``).

A request is counted only when every window has room, so a refused request costs nothing. Two
``Limiter``s: ``MemoryLimiter`` (one process) and ``RedisLimiter``, whose counters live in Redis
and are checked and bumped by one Lua script, atomically, so that the limits hold in total
across any number of gateway processes and machines sharing one Redis.

When Redis cannot be reached the configured policy applies, logged once per outage:

* fail open (the default): each process goes on limiting on its own, in memory, so a key can
  spend at most its limits once per process while Redis is away, never without bound;
* fail closed: 503 ``service_unavailable`` until Redis answers again.

The counts carry over both ways, so a flapping Redis never restarts a window from zero: the
memory fallback starts from the counts Redis last told this process, the hits it admitted are
added to Redis's counters by the first script that reaches Redis again, and a Redis that comes
back empty (restarted without persistence) is raised to the least count this process knows.

A burst is not an outage: connections come from a blocking pool (``redis_max_connections``),
and a request waits up to ``redis_pool_timeout`` s for one; past that it is refused with 503
``service_unavailable`` and ``Retry-After`` (back-pressure), neither counted nor let through on
memory counts. Redis is tried again at most once a second while it is away, so an outage adds
no latency. Windows are numbered from each gateway's clock (keep clocks in sync with NTP).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mesh_images_asgi._access.keys import GatewayKey
from mesh_images_asgi._core.errors import RateLimitExceeded, ServiceUnavailable
from mesh_images_asgi._observe.redact import redact

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
        counts = [self.count(bucket, window, now) for window in windows]
        allowed = all(count < window.limit for count, window in zip(counts, windows, strict=True))
        if allowed:
            counts = [count + 1 for count in counts]
            for window, number, count in zip(windows, numbers, counts, strict=True):
                self._counters[(bucket, window.name)] = (number, count)
        return Decision.from_counts(windows, counts, allowed, now)

    def count(self, bucket: str, window: Window, now: float) -> int:
        """The bucket's count in the current ``window``."""
        stored = self._counters.get((bucket, window.name))
        return stored[1] if stored is not None and stored[0] == int(now // window.seconds) else 0

    def learn(
        self, bucket: str, windows: Sequence[Window], counts: Sequence[int], now: float
    ) -> None:
        """Raise the bucket's counts in the current windows to ``counts`` (learnt from Redis)."""
        for window, count in zip(windows, counts, strict=True):
            number = int(now // window.seconds)
            stored = self._counters.get((bucket, window.name))
            if stored is None or stored[0] != number or stored[1] < count:
                self._counters[(bucket, window.name)] = (number, count)

    async def aclose(self) -> None:
        self._counters.clear()


# KEYS: one counter per window. ARGV, per window in KEYS order: its limit, its TTL, the hits this
# process admitted on memory counts while Redis was away (they happened: added first), and the
# least count this process knows of (a Redis restarted empty must not count from zero).
# Returns {allowed (0/1), count of each window (after the hit when allowed)}.
_HIT = """
local counts, allowed = {}, 1
for i = 1, #KEYS do
  local stored = tonumber(redis.call('GET', KEYS[i]) or '0')
  counts[i] = math.max(stored + tonumber(ARGV[4 * i - 1]), tonumber(ARGV[4 * i]))
  if counts[i] ~= stored then redis.call('SET', KEYS[i], counts[i], 'EX', ARGV[4 * i - 2]) end
  if counts[i] >= tonumber(ARGV[4 * i - 3]) then allowed = 0 end
end
if allowed == 1 then
  for i = 1, #KEYS do
    counts[i] = redis.call('INCR', KEYS[i])
    if counts[i] == 1 then redis.call('EXPIRE', KEYS[i], ARGV[4 * i - 2]) end
  end
end
table.insert(counts, 1, allowed)
return counts
"""


def pool_exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` is the blocking pool's "no connection within the timeout" (the pool
    raises a plain ``ConnectionError`` caused by its wait's ``TimeoutError``)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import MaxConnectionsError

    if isinstance(exc, MaxConnectionsError):
        return True
    return type(exc) is RedisConnectionError and isinstance(exc.__cause__, TimeoutError)


class RedisLimiter:
    """Fixed windows in Redis, shared by every gateway using the same Redis.

    ``fail_open``: what to do while Redis cannot be reached (see the module docstring).
    """

    def __init__(
        self,
        url: str,
        *,
        fail_open: bool,
        timeout: float = 0.5,
        max_connections: int = 50,
        pool_timeout: float = 2.0,
    ) -> None:
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
        # A blocking pool: under a burst a request waits for a connection (back-pressure),
        # where the default pool raises at once, which would look like an outage.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._client: Any = aioredis.Redis.from_pool(pool)
        self._script: Any = self._client.register_script(_HIT)
        self._unreachable = (RedisError, OSError)
        self._fail_open = fail_open
        self._fallback = MemoryLimiter()
        self._carried: dict[tuple[str, str, int], int] = {}
        """Hits admitted on memory counts that Redis has not seen: (bucket, window, number)."""
        self._down_since: float | None = None
        self._next_try = 0.0

    async def hit(self, bucket: str, windows: Sequence[Window], now: float) -> Decision:
        if self._down_since is None or time.monotonic() >= self._next_try:
            slots = [(bucket, w.name, int(now // w.seconds)) for w in windows]
            carried = [self._carried.get(slot, 0) for slot in slots]
            known = [self._fallback.count(bucket, window, now) for window in windows]
            try:
                reply = await self._script(
                    keys=[f"{_PREFIX}:{{{b}}}:{name}:{number}" for b, name, number in slots],
                    args=[
                        value
                        for w, hits, least in zip(windows, carried, known, strict=True)
                        for value in (w.limit, w.seconds + MINUTE, hits, least)
                    ],
                )
            except self._unreachable as exc:  # refused, timed out, auth failed, read-only...
                if pool_exhausted(exc):
                    raise ServiceUnavailable(
                        "The gateway is busy counting requests; try again shortly.",
                        retry_after_seconds=_RETRY_INTERVAL,
                    ) from None
                self._went_down(exc)
            else:
                self._came_back()
                self._synced(bucket, slots, carried)
                counts = [int(count) for count in reply[1:]]
                self._fallback.learn(bucket, windows, counts, now)
                return Decision.from_counts(windows, counts, bool(reply[0]), now)
        if not self._fail_open:
            raise ServiceUnavailable(
                "Rate limiting is unavailable, so requests are refused; try again shortly.",
                retry_after_seconds=_RETRY_INTERVAL,
            )
        decision = await self._fallback.hit(bucket, windows, now)
        if decision.allowed:
            for window in windows:
                slot = (bucket, window.name, int(now // window.seconds))
                self._carried[slot] = self._carried.get(slot, 0) + 1
        return decision

    def _synced(
        self, bucket: str, slots: Sequence[tuple[str, str, int]], sent: Sequence[int]
    ) -> None:
        """Redis has added the ``sent`` hits of ``slots``: forget them and the past windows."""
        for slot, hits in zip(slots, sent, strict=True):
            left = self._carried.pop(slot, 0) - hits  # hits admitted while the script ran
            if left > 0:
                self._carried[slot] = left
        current = set(slots)
        for slot in [s for s in self._carried if s[0] == bucket and s not in current]:
            del self._carried[slot]

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
        logger.warning("mesh-images: Redis is available again after %.1f s", outage)

    async def aclose(self) -> None:
        await self._client.aclose()


def create_limiter(
    redis_url: str | None,
    *,
    fail_open: bool,
    max_connections: int = 50,
    pool_timeout: float = 2.0,
) -> Limiter:
    """A ``RedisLimiter`` when a Redis URL is configured, else a ``MemoryLimiter``."""
    if redis_url:
        return RedisLimiter(
            redis_url,
            fail_open=fail_open,
            max_connections=max_connections,
            pool_timeout=pool_timeout,
        )
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
