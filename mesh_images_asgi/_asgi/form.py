"""The bounded, streaming ``multipart/form-data`` reader of ``POST /v1/images/edits``.

The body is fed to ``python-multipart``'s streaming parser as it arrives; limits are enforced
while reading, so nothing past them is ever held:

    a file part past ``max_file_bytes``      413 request_too_large (param: the field)
    more than ``max_files`` file parts       413 request_too_large
    a text field past ``max_field_bytes``    413 request_too_large (param: the field)
    more than ``max_fields`` text fields     413 request_too_large
    the body past ``max_body_bytes``         413 request_too_large
    the body not complete in ``time_limit``  408 request_timeout
    a malformed body (boundary, headers)     400 invalid_request
    a body ending before its last boundary   400 invalid_request

Parts are kept in memory (no temporary files: nothing of a refused upload stays on disk) and in
the order they came.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartState, parse_options_header

from mesh_images_asgi._asgi.body import chunks, within
from mesh_images_asgi._core.asgi import Receive
from mesh_images_asgi._core.errors import GatewayError, InvalidRequest, RequestTooLarge

__all__ = ["FormLimits", "FormPart", "boundary_of", "read_form"]


@dataclass(frozen=True, slots=True)
class FormLimits:
    """What one form may hold."""

    max_body_bytes: int
    max_file_bytes: int = 50 * 1024 * 1024
    max_files: int = 17
    max_fields: int = 64
    max_field_bytes: int = 256 * 1024


@dataclass(slots=True)
class FormPart:
    """One part: its field name, its file name (None for a text field) and its bytes."""

    name: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def is_file(self) -> bool:
        return self.filename is not None


def boundary_of(content_type: bytes) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; 400 when it names none."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise InvalidRequest("Content-Type multipart/form-data names no usable boundary.")
    return boundary


class _Collector:
    """The parser's callbacks: build the parts and hold them to the limits."""

    def __init__(self, limits: FormLimits) -> None:
        self.limits = limits
        self.parts: list[FormPart] = []
        self.files = 0
        self.fields = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._current: FormPart | None = None
        self.error: GatewayError | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._current = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > 4096:
            self._fail(InvalidRequest("A multipart header is longer than 4096 bytes."))

    def _header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            self._fail(
                InvalidRequest("A multipart part has no Content-Disposition form-data name.")
            )
            return
        filename = options.get(b"filename")
        part = FormPart(
            name.decode("utf-8", "replace"),
            None if filename is None else filename.decode("utf-8", "replace"),
        )
        if part.is_file:
            self.files += 1
            if self.files > self.limits.max_files:
                self._fail(
                    RequestTooLarge(
                        f"The form has more than {self.limits.max_files} files.", param=part.name
                    )
                )
        else:
            self.fields += 1
            if self.fields > self.limits.max_fields:
                self._fail(
                    RequestTooLarge(f"The form has more than {self.limits.max_fields} fields.")
                )
        self._current = part
        self.parts.append(part)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None or self.error is not None:
            return
        part.data += data[start:end]
        limit = self.limits.max_file_bytes if part.is_file else self.limits.max_field_bytes
        if len(part.data) > limit:
            what = "file" if part.is_file else "field"
            self._fail(
                RequestTooLarge(
                    f"The {what} {part.name!r} is larger than the limit of {limit} bytes.",
                    param=part.name,
                )
            )

    def _fail(self, error: GatewayError) -> None:
        if self.error is None:
            self.error = error
        self.parts.clear()  # nothing of a refused upload is kept
        self._current = None


async def read_form(
    receive: Receive, boundary: bytes, limits: FormLimits, time_limit: float | None
) -> list[FormPart]:
    """Read and parse the whole form body; the parts in order, or the error that refused it."""
    return await within(time_limit, _read(receive, boundary, limits))


async def _read(receive: Receive, boundary: bytes, limits: FormLimits) -> list[FormPart]:
    collector = _Collector(limits)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in chunks(receive, limits.max_body_bytes):
            try:
                parser.write(chunk)
            except MultipartParseError:
                raise InvalidRequest("The multipart/form-data body is malformed.") from None
            if collector.error is not None:
                raise collector.error
    except RequestTooLarge:
        collector.parts.clear()  # nothing of a refused upload is kept
        raise
    try:
        parser.finalize()
    except MultipartParseError:
        raise InvalidRequest("The multipart/form-data body is malformed.") from None
    if collector.error is not None:
        raise collector.error
    if parser.state != MultipartState.END:
        raise InvalidRequest(
            "The multipart/form-data body ended before its closing boundary (truncated?)."
        )
    return collector.parts
