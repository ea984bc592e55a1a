"""The embedded image store: files in a local directory, links signed with HMAC-SHA256.

A stored image is the file ``{expires}-{id}.{ext}`` (``id``: 128 random bits); its URL is
``{base}v1/images/hosted/{id}.{ext}?expires={expires}&signature={sig}`` where ``sig`` is the
unpadded URL-safe base64 of HMAC-SHA256(key, ``"{id}.{ext}:{expires}"``). Whoever has the URL can
fetch the image until ``expires``; changing any part of it breaks the signature. The key comes
from ``MESH_IMAGES_STORE_KEY`` or is generated at first start and kept in ``.signing-key`` in the
directory (mode 0600), so URLs survive restarts.

Book-keeping lives in memory (built by one scan of the directory at start): the files in the order
they were written, and a heap of expiries. Each ``put`` first deletes at most ``SWEEP_BATCH``
expired files (bounded work per pass, no background task), then, if the new image would take the
directory past ``max_bytes``, deletes the oldest images until it fits (images still being written
are spared, so the cap may be passed by the writes in flight). An expired image is never
served, whether or not its file is gone yet. Several processes may share a directory: each signs
with the same key and serves every file, but accounts only for the files it wrote or found at its
start (the cap is per process; use S3 when scaling out).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from mesh_images_asgi._core.errors import Forbidden, ImageStoreError, NotFound, UrlExpired
from mesh_images_asgi._store.base import CONTENT_TYPES, EXTENSIONS

__all__ = ["HOSTED_PREFIX", "SWEEP_BATCH", "EmbeddedStore", "StoredFile"]

logger = logging.getLogger("mesh_images_asgi")

HOSTED_PREFIX = "/v1/images/hosted/"
"""Where the gateway serves the embedded store's images (below its mount path)."""
SWEEP_BATCH = 64
"""Expired files one sweep pass deletes at most."""
KEY_FILE = ".signing-key"

_NAME = re.compile(r"([0-9a-f]{32})\.(png|jpeg|webp)")
_FILE = re.compile(r"(\d{1,12})-([0-9a-f]{32}\.(?:png|jpeg|webp))")


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file the store may serve: where it is, what it is, until when."""

    path: Path
    content_type: str
    etag: str
    expires: int


@dataclass(frozen=True, slots=True)
class _Entry:
    disk_name: str
    size: int
    expires: int


def _load_key(directory: Path) -> bytes:
    """The key kept in ``directory``, created (atomically, 0600) if there is none yet."""
    path = directory / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    draft = directory / f".signing-key.{secrets.token_hex(8)}.tmp"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(secrets.token_hex(32).encode())
    try:
        os.link(draft, path)  # fails if another process won the race: then its key is the key
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_bytes()


def _write(path: Path, data: bytes, doomed: Iterable[Path]) -> None:
    draft = path.with_name(f".{path.name}.tmp")
    draft.write_bytes(data)
    os.replace(draft, path)  # a reader never sees half an image
    _unlink(doomed)


def _unlink(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class EmbeddedStore:
    """Images as files in ``directory``, at most ``max_bytes`` of them; see the module docs."""

    def __init__(
        self,
        directory: Path,
        key: bytes,
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._key = key
        self.max_bytes = max_bytes
        self._clock = clock
        self._files: dict[str, _Entry] = {}  # disk name -> entry, oldest first
        self._expiries: list[tuple[int, str]] = []  # heap of (expires, disk name)
        self._writing: set[str] = set()  # disk names being written: never evicted meanwhile
        self.bytes = 0

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        key: bytes | None = None,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> EmbeddedStore:
        """Create ``directory`` if needed, load (or make) the key, and index the files there."""
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            store = cls(directory, key or _load_key(directory), max_bytes, clock=clock)
            store._scan()
        except OSError as exc:
            raise ImageStoreError(
                f"The image store directory {str(directory)!r} cannot be used: {exc.strerror}."
            ) from None
        return store

    def _scan(self) -> None:
        found: list[tuple[float, _Entry]] = []
        with os.scandir(self.directory) as entries:
            for item in entries:
                if item.name.endswith(".tmp") and not item.name.startswith(".signing-key"):
                    _unlink([Path(item.path)])  # a write cut by a crash
                    continue
                match = _FILE.fullmatch(item.name)
                if match is not None and item.is_file():
                    stat = item.stat()
                    entry = _Entry(item.name, stat.st_size, int(match[1]))
                    found.append((stat.st_mtime, entry))
        for _, entry in sorted(found, key=lambda pair: pair[0]):
            self._add(entry)

    def _add(self, entry: _Entry) -> None:
        self._files[entry.disk_name] = entry
        heapq.heappush(self._expiries, (entry.expires, entry.disk_name))
        self.bytes += entry.size

    def _forget(self, disk_name: str) -> Path | None:
        entry = self._files.pop(disk_name, None)
        if entry is None:
            return None
        self.bytes -= entry.size
        return self.directory / disk_name

    def __len__(self) -> int:
        return len(self._files)

    def signature(self, name: str, expires: int) -> str:
        digest = hmac.new(self._key, f"{name}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    async def put(self, data: bytes, content_type: str, ttl: int, base: str) -> str:
        ext = EXTENSIONS.get(content_type)
        if ext is None:
            raise ImageStoreError(f"The embedded image store keeps no {content_type!r} files.")
        if len(data) > self.max_bytes:
            raise ImageStoreError(
                f"An image of {len(data)} bytes is larger than the image store's cap "
                "(MESH_IMAGES_STORE_MAX_BYTES)."
            )
        await self.sweep()
        expires = int(self._clock()) + ttl
        doomed = self._make_room(len(data))
        name = f"{secrets.token_hex(16)}.{ext}"
        entry = _Entry(f"{expires}-{name}", len(data), expires)
        self._add(entry)  # counted before the write: concurrent puts respect the cap too
        self._writing.add(entry.disk_name)
        with anyio.CancelScope(shield=True):  # a disconnect must not leave a file uncounted
            try:
                await anyio.to_thread.run_sync(
                    _write, self.directory / entry.disk_name, data, doomed
                )
            except OSError as exc:
                self._forget(entry.disk_name)
                raise ImageStoreError(
                    f"The image store could not write an image: {exc.strerror}."
                ) from None
            finally:
                self._writing.discard(entry.disk_name)
        return f"{base}{HOSTED_PREFIX[1:]}{name}?expires={expires}&signature=" + self.signature(
            name, expires
        )

    def _make_room(self, size: int) -> list[Path]:
        """Forget the oldest files until ``size`` more bytes fit under the cap; their paths.

        Files still being written are skipped (deleting one before its rename would leave it on
        disk uncounted, and its URL broken): the cap can be passed by the writes in flight.
        """
        excess = self.bytes + size - self.max_bytes
        victims: list[str] = []
        for disk_name, entry in self._files.items():
            if excess <= 0:
                break
            if disk_name not in self._writing:
                victims.append(disk_name)
                excess -= entry.size
        return [path for name in victims if (path := self._forget(name)) is not None]

    async def sweep(self, limit: int = SWEEP_BATCH) -> int:
        """Delete up to ``limit`` expired files; how many were deleted."""
        now = self._clock()
        doomed: list[Path] = []
        while self._expiries and len(doomed) < limit and self._expiries[0][0] <= now:
            _, disk_name = heapq.heappop(self._expiries)
            path = self._forget(disk_name)
            if path is not None:
                doomed.append(path)
        if doomed:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_unlink, doomed)
        return len(doomed)

    def locate(self, name: str, expires: str | None, signature: str | None) -> StoredFile:
        """The file a URL names, once its signature and expiry are checked.

        A malformed URL is 404 ``not_found``, a wrong signature 403 ``forbidden``, a valid URL
        past its expiry 410 ``url_expired``. The file itself may be gone (evicted by the cap):
        the caller answers 404 then.
        """
        match = _NAME.fullmatch(name)
        if match is None or expires is None or not expires.isdigit() or len(expires) > 12:
            raise NotFound("No such image.")
        if signature is None or not hmac.compare_digest(
            signature.encode(), self.signature(name, int(expires)).encode()
        ):
            raise Forbidden("This image URL's signature is not valid.")
        if int(expires) <= self._clock():
            raise UrlExpired("This image URL has expired.")
        return StoredFile(
            path=self.directory / f"{expires}-{name}",
            content_type=CONTENT_TYPES[match[2]],
            etag=f'"{match[1]}"',
            expires=int(expires),
        )

    def remaining(self, file: StoredFile) -> int:
        """Whole seconds until ``file`` expires (its ``Cache-Control: max-age``)."""
        return max(0, int(file.expires - self._clock()))

    async def aclose(self) -> None:
        """Nothing to release: the files stay until they expire."""
