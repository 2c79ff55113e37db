"""The extractive answerer quotes sources verbatim, cites them, and declines plainly.

These are the guarantees clients rely on (no invented text, citations that point
at the quoted source, a decline flag instead of a guess), checked on plain text
without any model.
"""

import re

import pytest

from services.common.errors import InvalidInputError
from services.common.text import split_sentences
from services.generation.backends import (
    DECLINE_TEXT,
    AnswerGenerator,
    GeneratedAnswer,
    SourcePassage,
    validate_request,
)
from services.generation.extractive import (
    ExtractiveAnswerer,
    content_terms,
    quotable_sentences,
    stem,
)

LEAVE = SourcePassage(
    number=1,
    title="Leave policy",
    text=(
        "Employees get 25 days of paid leave per year. Leave requests must be approved "
        "by a manager at least two weeks in advance. The office is closed on public holidays."
    ),
    score=0.62,
)
CARRY_OVER = SourcePassage(
    number=2,
    title="Carry-over rules",
    text=(
        "Unused leave days carry over until March 31 of the following year. "
        "After that date they expire and cannot be paid out."
    ),
    score=0.58,
)
CAFETERIA = SourcePassage(
    number=3,
    title="Cafeteria",
    text="The cafeteria serves lunch from noon to 2 p.m. on weekdays. Vegetarian dishes are "
    "available every day.",
    score=0.41,
)
SOURCES = [LEAVE, CARRY_OVER, CAFETERIA]


def answer_sentences(answer: GeneratedAnswer) -> list[tuple[str, int]]:
    """Each answer sentence without its marker, with the one source number it cites."""
    pairs = []
    for sentence in split_sentences(answer.text):
        numbers = [int(n) for n in re.findall(r"\[(\d+)\]", sentence)]
        assert len(numbers) == 1, f"expected exactly one citation in {sentence!r}"
        pairs.append((re.sub(r" ?\[\d+\]", "", sentence), numbers[0]))
    return pairs


def test_satisfies_the_generator_protocol() -> None:
    generator: AnswerGenerator = ExtractiveAnswerer()
    assert generator.name == "extractive"


async def test_answers_only_with_verbatim_source_sentences() -> None:
    answer = await ExtractiveAnswerer().generate(
        "How many days of paid leave do employees get per year?", SOURCES
    )
    assert not answer.declined
    by_number = {s.number: s for s in SOURCES}
    pairs = answer_sentences(answer)
    assert pairs
    for sentence, number in pairs:
        assert sentence in by_number[number].text
    assert "Employees get 25 days of paid leave per year [1]." in answer.text
    assert answer.cited_sources[0] == 1
    assert answer.cited_sources == list(dict.fromkeys(n for _, n in pairs))
    assert [s.source_number for s in answer.selection] == [n for _, n in pairs]


async def test_cites_the_source_that_holds_the_answer() -> None:
    answer = await ExtractiveAnswerer().generate(
        "Until when do unused leave days carry over?", SOURCES
    )
    assert not answer.declined
    assert answer.cited_sources[0] == 2
    assert "Unused leave days carry over until March 31 of the following year [2]." in (answer.text)
    assert 3 not in answer.cited_sources


async def test_answer_is_capped_and_keeps_source_order() -> None:
    answerer = ExtractiveAnswerer(max_sentences=2, relative_cutoff=0.0)
    answer = await answerer.generate("leave days manager year", SOURCES)
    assert len(answer.selection) <= 2
    positions = [LEAVE.text.index(s.text) for s in answer.selection if s.source_number == 1]
    assert positions == sorted(positions)


async def test_declines_an_unrelated_question() -> None:
    unrelated = [
        SourcePassage(s.number, s.text, s.title, score=0.08 - 0.01 * s.number) for s in SOURCES
    ]
    answer = await ExtractiveAnswerer().generate(
        "How do gluons bind quarks in quantum chromodynamics?", unrelated
    )
    assert answer.declined
    assert answer.cited_sources == []
    assert answer.selection == []
    assert answer.text == DECLINE_TEXT
    assert "[" not in answer.text


async def test_declines_without_word_overlap_even_if_retrieval_scores_high() -> None:
    # A miscalibrated retriever must not make it quote sentences that share no
    # word with the question.
    confident = [SourcePassage(s.number, s.text, s.title, score=0.9) for s in SOURCES]
    answer = await ExtractiveAnswerer().generate(
        "How do gluons bind quarks in quantum chromodynamics?", confident
    )
    assert answer.declined
    assert answer.cited_sources == []


async def test_declines_when_retrieval_found_nothing_relevant() -> None:
    weak = [SourcePassage(s.number, s.text, s.title, score=0.3) for s in SOURCES]
    answer = await ExtractiveAnswerer().generate("How many days of paid leave per year?", weak)
    assert answer.declined
    assert answer.cited_sources == []


async def test_declines_without_sources() -> None:
    answer = await ExtractiveAnswerer().generate("How many days of paid leave?", [])
    assert answer.declined
    assert answer.cited_sources == []


async def test_reports_backend_and_zero_token_usage() -> None:
    answer = await ExtractiveAnswerer().generate("How many days of paid leave?", SOURCES)
    assert (answer.backend, answer.model) == ("extractive", ExtractiveAnswerer.model)
    assert (answer.input_tokens, answer.output_tokens) == (0, 0)
    assert answer.prompt == ""


async def test_footnote_markers_in_sources_are_not_mistaken_for_citations() -> None:
    source = SourcePassage(
        number=1,
        title="Eiffel Tower",
        text="The Eiffel Tower is 330 metres tall [12]. It was completed in 1889 [3].",
        score=0.7,
    )
    answer = await ExtractiveAnswerer().generate("How tall is the Eiffel Tower?", [source])
    assert not answer.declined
    assert answer.cited_sources == [1]
    assert "The Eiffel Tower is 330 metres tall [1]." in answer.text
    assert "[12]" not in answer.text


async def test_a_sentence_repeated_by_overlapping_chunks_is_quoted_once() -> None:
    overlap = SourcePassage(
        number=4,
        title="Leave policy",
        text="Employees get 25 days of paid leave per year. Leave requests must be approved.",
        score=0.6,
    )
    answer = await ExtractiveAnswerer(relative_cutoff=0.0).generate(
        "How many days of paid leave do employees get per year?", [LEAVE, overlap]
    )
    assert answer.text.count("Employees get 25 days of paid leave per year") == 1
    assert len({s.text for s in answer.selection}) == len(answer.selection)


@pytest.mark.parametrize(
    ("question", "expect_declined"),
    [("How many days of paid leave do employees get?", False), ("What is QCD?", True)],
)
async def test_stream_yields_deltas_then_exactly_one_final_answer(
    question: str, expect_declined: bool
) -> None:
    events = [event async for event in ExtractiveAnswerer().stream(question, SOURCES)]
    finals = [e for e in events if isinstance(e, GeneratedAnswer)]
    assert len(finals) == 1
    assert events[-1] is finals[0]
    deltas = events[:-1]
    assert deltas
    assert all(isinstance(d, str) for d in deltas)
    assert "".join(d for d in deltas if isinstance(d, str)) == finals[0].text
    assert finals[0].declined is expect_declined
    if not expect_declined:
        assert len(deltas) == len(finals[0].selection)


async def test_stream_equals_generate() -> None:
    answerer = ExtractiveAnswerer()
    question = "Until when do unused leave days carry over?"
    events = [event async for event in answerer.stream(question, SOURCES)]
    assert events[-1] == await answerer.generate(question, SOURCES)


@pytest.mark.parametrize(
    ("question", "sources", "message"),
    [
        ("", [LEAVE], "question is empty"),
        ("  \n", [LEAVE], "question is empty"),
        ("q?", [LEAVE, SourcePassage(1, "Other text.", "t", 0.5)], "1 is used more than once"),
        ("q?", [SourcePassage(0, "Text.", "t", 0.5)], "source number 0 is not positive"),
        ("q?", [SourcePassage(-2, "Text.", "t", 0.5)], "source number -2 is not positive"),
        ("q?", [LEAVE, SourcePassage(4, "  ", "t", 0.5)], "source 4 has empty text"),
    ],
)
async def test_invalid_requests_are_rejected_naming_the_problem(
    question: str, sources: list[SourcePassage], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        validate_request(question, sources)
    with pytest.raises(InvalidInputError, match=message):
        await ExtractiveAnswerer().generate(question, sources)
    with pytest.raises(InvalidInputError, match=message):
        [event async for event in ExtractiveAnswerer().stream(question, sources)]


def test_valid_request_passes() -> None:
    validate_request("How many days?", SOURCES)
    validate_request("How many days?", [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"retrieval_weight": 1.5}, "retrieval_weight"), ({"max_sentences": 0}, "max_sentences")],
)
def test_bad_parameters_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExtractiveAnswerer(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("policies", "policy"),
        ("policy's", "policy"),
        ("days", "day"),
        ("carried", "carry"),
        ("carries", "carry"),
        ("running", "run"),
        ("called", "call"),
        ("approved", "approv"),
        ("approves", "approv"),
        ("approve", "approv"),
        ("strings", "str"),
        ("string", "str"),
        ("boxes", "box"),
        ("class", "class"),
        ("status", "status"),
    ],
)
def test_stem_maps_inflections_together(word: str, expected: str) -> None:
    assert stem(word) == expected


def test_content_terms_drop_stop_words_and_fold_accents() -> None:
    assert content_terms("What is the Hōryū-ji temple's age in 2024?") == [
        "horyu",
        "ji",
        "templ",
        "age",
        "2024",
    ]


def test_headings_labels_and_questions_are_never_quoted() -> None:
    text = (
        "## Annual leave\n\nFull-time employees receive 27 days of paid leave. "
        "Leave accrues monthly.\n\nCommunicating with customers\n\n"
        "What is object storage?\nObject storage keeps data as objects."
    )
    assert quotable_sentences(text) == [
        "Full-time employees receive 27 days of paid leave.",
        "Leave accrues monthly.",
        "Object storage keeps data as objects.",
    ]


async def test_off_topic_sentences_of_the_right_source_are_left_out() -> None:
    source = SourcePassage(
        number=1,
        title="Object Storage FAQ",
        score=0.7,
        text=(
            "A single object in Acme Object Storage can be up to 10 terabytes in size. "
            "Transfers between Acme services in the same region are free."
        ),
    )
    answer = await ExtractiveAnswerer().generate(
        "What is the maximum size of a single object in Acme Object Storage?", [source]
    )
    assert "10 terabytes" in answer.text
    assert "Transfers" not in answer.text
