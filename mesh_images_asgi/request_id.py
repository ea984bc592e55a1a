"""Request ids: echo a well-formed client ``X-Request-Id``, otherwise mint ``req_<ULID>``."""

from __future__ import annotations

import os
import re
import time

__all__ = ["new_request_id", "request_id_from_header"]

_VALID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid() -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_request_id() -> str:
    """A fresh ``req_<ULID>`` id."""
    return "req_" + _ulid()


def request_id_from_header(value: bytes | None) -> str:
    """The client's id when it matches ``^[A-Za-z0-9._:-]{1,64}$``; a new one otherwise."""
    if value is not None and _VALID.match(value):
        return value.decode("ascii")
    return new_request_id()
