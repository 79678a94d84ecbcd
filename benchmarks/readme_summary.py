"""Copy results/benchmark-v1/summary.md (what `peftbench report results/benchmark-v1 --summary`
writes) into the top-level README between its summary markers; `make tables` runs this after the
summaries, and tests/test_results.py fails when the README's copy differs.

    python benchmarks/readme_summary.py [README.md] [results/benchmark-v1/summary.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

BEGIN = "<!-- summary: results/benchmark-v1/summary.md (make tables copies it here) -->"
END = "<!-- end of summary -->"


def block(readme: str) -> str:
    """The README's copy of the summary (between the markers)."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[start:end].strip("\n")


def main(readme="README.md", summary="results/benchmark-v1/summary.md") -> None:
    text = Path(readme).read_text()
    new = text[: text.index(BEGIN) + len(BEGIN)] + "\n" + Path(summary).read_text().strip("\n") + "\n" + text[text.index(END):]
    if new != text:
        Path(readme).write_text(new)


if __name__ == "__main__":
    main(*sys.argv[1:])
