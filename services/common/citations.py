"""Citation markers ([1], [2][3], [1, 2]) in answer text: parse, validate, strip.

Generation parses the markers it wrote; query re-checks them against the sources
it actually supplied, so neither trusts the other blindly.
"""

import re
from dataclasses import dataclass

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def cited_numbers(text: str) -> list[int]:
    """Source numbers cited in `text`, in order of first appearance, without repeats."""
    seen: dict[int, None] = {}
    for match in _MARKER.finditer(text):
        for part in match.group(1).split(","):
            seen.setdefault(int(part), None)
    return list(seen)


@dataclass(frozen=True)
class CitationCheck:
    """Outcome of checking an answer's citations against the supplied sources."""

    text: str
    valid: list[int]
    removed: list[int]


def keep_supplied_citations(text: str, supplied: set[int]) -> CitationCheck:
    """Drop every citation to a source number that was not supplied.

    A marker listing several numbers keeps only the supplied ones; a marker left
    empty disappears together with the space before it.
    """
    removed: dict[int, None] = {}

    def rewrite(match: re.Match[str]) -> str:
        numbers = [int(p) for p in match.group(1).split(",")]
        kept = [n for n in numbers if n in supplied]
        for n in numbers:
            if n not in supplied:
                removed.setdefault(n, None)
        return "[" + ", ".join(str(n) for n in kept) + "]" if kept else ""

    cleaned = _MARKER.sub(rewrite, text)
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned)
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned).strip()
    return CitationCheck(text=cleaned, valid=cited_numbers(cleaned), removed=list(removed))
