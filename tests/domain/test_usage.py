"""Token usage is parsed once, by the provider, into ``Usage``: what counts as a count."""

from __future__ import annotations

import pytest

from mesh_images_asgi._domain.usage import Usage


@pytest.mark.parametrize(
    ("prompt", "completion", "total", "expected"),
    [
        (3, 4, 7, Usage(3, 4, 7)),
        (3, 4, None, Usage(3, 4, 7)),  # no total: the sum
        (3, 4, "7", Usage(3, 4, 7)),  # a malformed total: the sum
        (3, 4, 9, Usage(3, 4, 9)),  # the upstream's own total is kept
        (0, 0, 0, Usage(0, 0, 0)),
        (None, 4, 7, None),  # both counts or no usage at all
        (3, None, 7, None),
        (True, 4, 5, None),  # a JSON boolean is not a count
        (3, 4.0, 7, None),
        (-1, 4, 3, None),
        ("3", 4, 7, None),
    ],
)
def test_usage_of_raw_counts(
    prompt: object, completion: object, total: object, expected: Usage | None
) -> None:
    assert Usage.of(prompt, completion, total) == expected


def test_the_answer_shape_keeps_the_upstreams_details() -> None:
    details = {"input_tokens_details": {"text_tokens": 2, "image_tokens": 1}}
    usage = Usage.of(3, 4, details=details)
    assert usage is not None
    assert usage.as_json() == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "input_tokens_details": {"text_tokens": 2, "image_tokens": 1},
    }
