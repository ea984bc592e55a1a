"""Token usage an upstream reported: parsed once, by its provider, into one typed record.

Cost, metrics, spans, the access log and both response shapes read these fields; none of them
parses an upstream's dictionary again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one generation (OpenAI's ``input_tokens``/``output_tokens``, Gemini's
    ``promptTokenCount``/``candidatesTokenCount``), under the names of our contract."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    details: Mapping[str, Any] = field(default_factory=dict)
    """Breakdowns as the upstream sent them (``input_tokens_details``, ...), kept for clients."""

    @classmethod
    def of(
        cls,
        prompt: object,
        completion: object,
        total: object = None,
        details: Mapping[str, Any] | None = None,
    ) -> Usage | None:
        """A record from an upstream's raw counts; None unless both counts are whole numbers.
        A missing or malformed total is the sum."""
        prompt_tokens, completion_tokens = _count(prompt), _count(completion)
        if prompt_tokens is None or completion_tokens is None:
            return None
        whole = _count(total)
        if whole is None:
            whole = prompt_tokens + completion_tokens
        return cls(prompt_tokens, completion_tokens, whole, dict(details or {}))

    def as_json(self) -> dict[str, Any]:
        """The ``usage`` object of our answers (details objects kept as sent)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            **self.details,
        }


def _count(value: object) -> int | None:
    """A token count, or None for anything that is not a whole number of at least 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
