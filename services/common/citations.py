"""Citation markers ([1], [2][3], [1, 2]) in answer text: parse, validate, strip.

Generation parses the markers it wrote; query re-checks them against the sources
it actually supplied, so neither trusts the other blindly.
"""

import re
from dataclasses import dataclass

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
# Adjacent markers ("[2][3]") with the spaces before them: they are kept or dropped as a unit.
# A run of markers with the spaces before it. The look-behind starts a match
# only where a run of spaces starts: without it, every space of a long run
# would scan the rest of the run again (time quadratic in its length).
_MARKER_RUN = re.compile(r"(?<![ \t])([ \t]*)((?:\[\d+(?:\s*,\s*\d+)*\])+)")


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

    A marker listing several numbers keeps only the supplied ones; a marker (or a
    run of adjacent ones, "[2][3]") left empty disappears together with the space
    before it. Nothing else in the text changes: answers may quote sources
    verbatim (odd spacing included) or hold indented code.
    """
    removed: dict[int, None] = {}

    def rewrite(run: re.Match[str]) -> str:
        kept_markers = []
        for marker in _MARKER.finditer(run.group(2)):
            numbers = [int(p) for p in marker.group(1).split(",")]
            kept = [n for n in numbers if n in supplied]
            for n in numbers:
                if n not in supplied:
                    removed.setdefault(n, None)
            if len(kept) == len(numbers):
                kept_markers.append(marker.group())
            elif kept:
                kept_markers.append("[" + ", ".join(str(n) for n in kept) + "]")
        return run.group(1) + "".join(kept_markers) if kept_markers else ""

    cleaned = _MARKER_RUN.sub(rewrite, text).strip()
    return CitationCheck(text=cleaned, valid=cited_numbers(cleaned), removed=list(removed))
