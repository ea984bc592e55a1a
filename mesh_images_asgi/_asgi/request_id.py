"""Request ids: echo a well-formed client ``X-Request-Id``, otherwise mint ``req_<ULID>``.

A ULID is 48 bits of Unix milliseconds then 80 random bits, as 26 Crockford base32 characters.
Minting one is on every request's path, so the time part is encoded once per millisecond and
the randomness (``os.urandom``) is read 4 KiB at a time: about 1 µs instead of 2 here.
"""

from __future__ import annotations

import os
import re
import time

__all__ = ["new_request_id", "request_id_from_header"]

_VALID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
"""Every 10-bit value as two Crockford base32 characters."""
_RANDOM_BYTES = 10
_POOL_BYTES = 4096


class _Ulids:
    """A ULID source: ``ulids()`` gives the next one."""

    __slots__ = ("_at", "_ms", "_pool", "_prefix")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the time part and the unread randomness (a forked child must not share it)."""
        self._ms = -1
        self._prefix = ""
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:  # the 48-bit time, two zero bits on top: 5 pairs
            self._ms = ms
            self._prefix = "".join([_PAIRS[ms >> shift & 1023] for shift in (40, 30, 20, 10, 0)])
        at = self._at
        if at + _RANDOM_BYTES > len(self._pool):
            self._pool, at = os.urandom(_POOL_BYTES), 0
        self._at = at + _RANDOM_BYTES
        r = int.from_bytes(self._pool[at : at + _RANDOM_BYTES], "big")
        p = _PAIRS
        return (
            self._prefix
            + p[r >> 70]
            + p[r >> 60 & 1023]
            + p[r >> 50 & 1023]
            + p[r >> 40 & 1023]
            + p[r >> 30 & 1023]
            + p[r >> 20 & 1023]
            + p[r >> 10 & 1023]
            + p[r & 1023]
        )


_ulid = _Ulids()
os.register_at_fork(after_in_child=_ulid.reset)


def new_request_id() -> str:
    """A fresh ``req_<ULID>`` id."""
    return "req_" + _ulid()


def request_id_from_header(value: bytes | None) -> str:
    """The client's id when it matches ``^[A-Za-z0-9._:-]{1,64}$``; a new one otherwise."""
    if value is not None and _VALID.fullmatch(value):
        return value.decode("ascii")
    return new_request_id()
