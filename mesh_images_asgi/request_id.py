"""Request ids: echo a well-formed client ``X-Request-Id``, otherwise mint ``req_<ULID>``."""

from __future__ import annotations

import os
import re
import time

__all__ = ["new_request_id", "request_id_from_header"]

_VALID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
"""Every 10-bit value as two Crockford base32 characters."""
_SHIFTS = range(120, -1, -10)


def _ulid() -> str:
    """48 bits of milliseconds then 80 random bits, in Crockford's base32 (26 characters)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join([_PAIRS[value >> shift & 1023] for shift in _SHIFTS])


def new_request_id() -> str:
    """A fresh ``req_<ULID>`` id."""
    return "req_" + _ulid()


def request_id_from_header(value: bytes | None) -> str:
    """The client's id when it matches ``^[A-Za-z0-9._:-]{1,64}$``; a new one otherwise."""
    if value is not None and _VALID.match(value):
        return value.decode("ascii")
    return new_request_id()
