"""What a text query must be, for every way of searching (the CLI, the server, the API).

One rule, kept here so the command line and the server refuse the same queries with the same
words: a text query has something to search for (not empty or only spaces) and is valid Unicode
text (a lone surrogate such as ``"\\ud800"``, which JSON can carry, cannot be encoded or
tokenised)."""

from __future__ import annotations

from nomic_memory.errors import UsageError


class QueryError(UsageError):
    """A text query that cannot be searched for (empty, or not valid text)."""


def check_text_query(text: str, name: str = "query") -> str:
    """``text`` unchanged if it can be searched for; else :class:`QueryError` naming ``name``."""
    if not isinstance(text, str):
        raise QueryError(f"{name}: a text query must be a string, not {type(text).__name__}")
    if not text.strip():
        raise QueryError(f"{name}: empty text query (type some words, or search by an image)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QueryError(
            f"{name}: not valid Unicode text (a lone surrogate {text[e.start]!r} at character {e.start})"
        ) from None
    return text


__all__ = ["QueryError", "check_text_query"]
