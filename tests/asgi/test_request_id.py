from __future__ import annotations

import os
import re
import time
from unittest import mock

from mesh_images_asgi._asgi import request_id
from mesh_images_asgi._asgi.request_id import new_request_id, request_id_from_header

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID = re.compile(r"req_[0-7][0-9A-HJKMNP-TV-Z]{25}")


def decode(ulid: str) -> tuple[int, int]:
    """(milliseconds, 80 random bits) of a ULID, decoded the plain way."""
    value = 0
    for char in ulid:
        value = value << 5 | CROCKFORD.index(char)
    return value >> 80, value & (1 << 80) - 1


def test_a_new_id_is_a_ulid_of_now() -> None:
    before = time.time_ns() // 1_000_000
    minted = new_request_id()
    after = time.time_ns() // 1_000_000
    assert ULID.fullmatch(minted), minted
    ms, _ = decode(minted[4:])
    assert before <= ms <= after


def test_the_random_part_is_the_next_ten_bytes_of_urandom() -> None:
    pool = bytes(range(200, 256)) * 80
    request_id._ulid.reset()
    try:
        with mock.patch("os.urandom", return_value=pool) as urandom:
            first, second = new_request_id(), new_request_id()
        urandom.assert_called_once()
        assert decode(first[4:])[1] == int.from_bytes(pool[:10], "big")
        assert decode(second[4:])[1] == int.from_bytes(pool[10:20], "big")
    finally:
        request_id._ulid.reset()


def test_the_pool_is_read_again_when_spent() -> None:
    request_id._ulid.reset()
    with mock.patch("os.urandom", side_effect=os.urandom) as urandom:
        ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert urandom.call_count == 3  # 409 ids per 4 KiB


def test_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_request_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    stamps = [decode(minted[4:])[0] for minted in ids]
    assert stamps == sorted(stamps)


def test_a_forked_child_does_not_reuse_the_parents_randomness() -> None:
    new_request_id()  # the pool holds unread randomness now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    try:
        os.waitpid(pid, 0)
        child = os.read(read, 100).decode()
    finally:
        os.close(read)
    parent = new_request_id()
    assert ULID.fullmatch(child)
    assert decode(child[4:])[1] != decode(parent[4:])[1]


def test_a_well_formed_client_id_is_kept_and_others_are_replaced() -> None:
    assert request_id_from_header(b"trace-123.abc:9") == "trace-123.abc:9"
    for bad in (b"", b"a b", b"x" * 65, "é".encode(), b"id\n"):  # "$" would let "id\n" in
        assert ULID.fullmatch(request_id_from_header(bad))
    assert ULID.fullmatch(request_id_from_header(None))
