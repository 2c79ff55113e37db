"""Text handling takes time linear in its input, whatever a document or an
answer holds: each case runs an input built to make a backtracking pattern
quadratic (or worse) in a fresh interpreter limited to CPU_SECONDS of CPU.
Linear work on these inputs takes milliseconds; quadratic work, minutes. So
nothing here is timed: a case either finishes or is killed by the limit."""

import resource
import subprocess
import sys
import textwrap

import pytest

CPU_SECONDS = 3
N = 200_000
"""Characters of each input: a quadratic pass over it is 4e10 steps."""


def run_bounded(code: str) -> subprocess.CompletedProcess[str]:
    def limit_cpu() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))

    return subprocess.run(
        [sys.executable, "-c", f"N = {N}\n" + textwrap.dedent(code)],
        preexec_fn=limit_cpu,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


CASES = {
    "trailing blanks of a text document": """
        from services.ingestion.parsers import parse_document
        parse_document("a.txt", b"a" + b" " * N + b"x", "text/plain")
    """,
    "trailing blanks of a PDF page": """
        from services.ingestion.parsers import _clean_pdf_page
        _clean_pdf_page("a" + " " * N + "x")
    """,
    "an ATX heading with a long run of blanks": """
        from services.ingestion.parsers import parse_document
        parse_document("a.md", b"#" + b" " * N + b"x #", "text/markdown")
    """,
    "a heading of many opening brackets": """
        from services.ingestion.parsers import parse_document
        parse_document("a.md", b"# " + b"[" * N + b"(" * N, "text/markdown")
    """,
    "a front-matter title with a long run of blanks": """
        from services.ingestion.parsers import parse_document
        body = b"---\\ntitle:" + b" " * N + b"x\\n---\\ntext"
        parse_document("a.md", body, "text/markdown")
    """,
    "blanks before no citation marker": """
        from services.common.citations import keep_supplied_citations
        keep_supplied_citations("a" + " " * N + "b [1]", {1})
    """,
    "a sentence of many marks before its last word": """
        from services.generation.extractive import _cite
        assert _cite("!" * N + "x", 1).endswith("x [1]")
        assert _cite("Stop" + "!" * N, 1).endswith("[1]" + "!" * N)
    """,
}


@pytest.mark.parametrize("case", CASES)
def test_text_handling_is_linear(case: str) -> None:
    result = run_bounded(CASES[case])
    assert result.returncode == 0, (
        f"{case}: killed by its CPU limit of {CPU_SECONDS} s"
        if result.returncode < 0
        else result.stderr[-2000:]
    )


def test_the_limit_stops_a_quadratic_pattern() -> None:
    """The harness can fail: the pattern the text tidy-up used is killed."""
    result = run_bounded("""
        import re
        re.sub(r"[ \\t]+$", "", "a" + " " * N + "x", flags=re.MULTILINE)
    """)
    assert result.returncode < 0, "a quadratic pattern finished within the limit"
