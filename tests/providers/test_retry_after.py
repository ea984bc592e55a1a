"""``Retry-After`` and ``retry-after-ms`` parsed per RFC 9110, clamped, garbage ignored."""

from __future__ import annotations

import pytest

from mesh_images_asgi.providers._retry_after import MAX_DELAY, retry_after_seconds

NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "120"}, 120.0),
        ({"retry-after": " 7 "}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "9" * 400}, MAX_DELAY),  # huge but well-formed: clamped
        ({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),  # IMF-fixdate
        ({"retry-after": "Wednesday, 21-Oct-15 07:29:00 GMT"}, 60.0),  # obsolete RFC 850
        ({"retry-after": "Wed Oct 21 07:28:05 2015"}, 5.0),  # asctime, read as UTC
        ({"retry-after": "Wed, 21 Oct 2015 07:00:00 GMT"}, 0.0),  # past
        ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_DELAY),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "1e400", "retry-after": "9"}, 9.0),  # bad ms: the seconds stand
        ({"retry-after-ms": "9" * 400}, MAX_DELAY),
        ({}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "Infinity"}, None),
        ({"retry-after": "1e400"}, None),
        ({"retry-after": "NaN"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "1.5"}, None),  # delay-seconds is 1*DIGIT
        ({"retry-after": "soon-ish"}, None),
        ({"retry-after": "Wed, 32 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after-ms": "inf"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after-ms": "-5"}, None),
    ],
)
def test_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers, now=lambda: NOW) == seconds
