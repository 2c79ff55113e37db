"""Citation markers and sentence splitting, shared by generation, query and ingestion.

Query trusts `keep_supplied_citations` to turn a generator's markers into the
citations a user sees, and the extractive answerer and chunker trust the
sentence splitter to cut text where a reader would; both are checked here on
the forms real text takes.
"""

import pytest

from services.common.citations import cited_numbers, keep_supplied_citations
from services.common.text import sentence_spans, split_sentences

# --- cited_numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Leave is 25 days [1].", [1]),
        ("Both say so [1, 2].", [1, 2]),
        ("Both say so [1,2].", [1, 2]),
        ("Adjacent markers [2][3].", [2, 3]),
        ("First [3]. Then [1]. Again [3] and [1, 3].", [3, 1]),
        ("Two digits [12].", [12]),
        ("No citation here.", []),
        ("Not markers: [a], [], [1-2], list[0 ].", []),
    ],
)
def test_cited_numbers_in_order_of_first_appearance(text: str, expected: list[int]) -> None:
    assert cited_numbers(text) == expected


# --- keep_supplied_citations ------------------------------------------------------


def test_all_supplied_citations_leave_the_text_unchanged() -> None:
    text = "Employees get 25 days [1]. Unused days carry over [2][1]."
    check = keep_supplied_citations(text, {1, 2})
    assert check.text == text
    assert check.valid == [1, 2]
    assert check.removed == []


def test_unsupplied_marker_is_removed_with_its_space() -> None:
    check = keep_supplied_citations("Leave is 25 days [1]. Carry over ends in March [4].", {1, 2})
    assert check.text == "Leave is 25 days [1]. Carry over ends in March."
    assert check.valid == [1]
    assert check.removed == [4]


def test_marker_listing_several_numbers_keeps_the_supplied_ones() -> None:
    check = keep_supplied_citations("Both say so [1, 4, 2].", {1, 2})
    assert check.text == "Both say so [1, 2]."
    assert check.valid == [1, 2]
    assert check.removed == [4]


def test_adjacent_and_repeated_markers() -> None:
    check = keep_supplied_citations("A [2][3] b [7] c [3] d [7][7].", {3})
    assert check.text == "A [3] b c [3] d."
    assert check.valid == [3]
    assert check.removed == [2, 7]


def test_removal_before_a_comma_and_at_the_start() -> None:
    check = keep_supplied_citations("[5] See the policy [4], then [1].", {1})
    assert check.text == "See the policy, then [1]."
    assert check.removed == [5, 4]


def test_no_supplied_sources_strips_every_marker() -> None:
    check = keep_supplied_citations("It is 330 metres tall [12]. Built in 1889 [3].", set())
    assert check.text == "It is 330 metres tall. Built in 1889."
    assert check.valid == []
    assert check.removed == [12, 3]


def test_text_outside_removed_markers_is_left_alone() -> None:
    # Verbatim quotes keep their spacing and an LLM's code block its indentation.
    text = "The year , in short [1].\n\n```\nif x:\n    return  1\n```\nDone [9]."
    check = keep_supplied_citations(text, {1})
    assert check.text == "The year , in short [1].\n\n```\nif x:\n    return  1\n```\nDone."


# --- sentence splitting -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Dr. Smith arrived at 5 p.m. on Monday. He left early.",
            ["Dr. Smith arrived at 5 p.m. on Monday.", "He left early."],
        ),
        (
            "See e.g. the appendix. It explains U.S. law, i.e. federal law. Fine.",
            ["See e.g. the appendix.", "It explains U.S. law, i.e. federal law.", "Fine."],
        ),
        (
            "J. R. R. Tolkien wrote it. It sold well.",
            ["J. R. R. Tolkien wrote it.", "It sold well."],
        ),
        (
            "The rate is 3.5 percent. It rose from 2.1 in 2020.",
            ["The rate is 3.5 percent.", "It rose from 2.1 in 2020."],
        ),
        ("Version 2.0 is out! Try it? Yes.", ["Version 2.0 is out!", "Try it?", "Yes."]),
        ('She said "Stop." Then she left.', ['She said "Stop."', "Then she left."]),
        ('He asked "Why?" "Because." Nobody.', ['He asked "Why?"', '"Because."', "Nobody."]),
        ("“Curly quotes.” Next one.", ["“Curly quotes.”", "Next one."]),
        ("He said ‘no.’ “Yes,” she said.", ["He said ‘no.’", "“Yes,” she said."]),
        ("(A note.) Next sentence.", ["(A note.)", "Next sentence."]),
        ("It ends with 3. 4 people came.", ["It ends with 3.", "4 people came."]),
        ("First line.\n\nSecond paragraph.", ["First line.", "Second paragraph."]),
        ("lowercase after a period. stays together", ["lowercase after a period. stays together"]),
        ("No terminal punctuation", ["No terminal punctuation"]),
        ("", []),
        ("   \n", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_sentence_spans_map_back_to_the_text() -> None:
    text = "  First one.   Second one!\nThird?  "
    spans = list(sentence_spans(text))
    assert [text[s:e] for s, e in spans] == ["First one.", "Second one!", "Third?"]
    assert spans[0][0] == 2
