"""Copy results/benchmark-v1/summary.md (what `peftbench report results/benchmark-v1 --summary`
writes) into the top-level README between its summary markers, and the table rows of each
`<!-- table: results/.../table.md -->` block (the early published results) from that file; `make
tables` runs this after the tables, and tests/test_results.py and tests/test_readme.py fail when the
README's copies differ.

    python benchmarks/readme_summary.py [README.md] [results/benchmark-v1/summary.md]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

BEGIN = "<!-- summary: results/benchmark-v1/summary.md (make tables copies it here) -->"
END = "<!-- end of summary -->"
# <!-- table: results/sst2-minilm/table.md (make tables copies its rows here) --> ... <!-- end of table -->
TABLE = re.compile(r"(<!-- table: (\S+) [^>]*-->\n)((?:(?!<!--).)*?)(<!-- end of table -->)", re.S)


def block(readme: str) -> str:
    """The README's copy of the summary (between the markers)."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[start:end].strip("\n")


def table_rows(path: Path) -> str:
    """A report's table without its caption: the lines that are table rows."""
    return "\n".join(line for line in path.read_text().splitlines() if line.startswith("|"))


def main(readme="README.md", summary="results/benchmark-v1/summary.md") -> None:
    text = Path(readme).read_text()
    new = text[: text.index(BEGIN) + len(BEGIN)] + "\n" + Path(summary).read_text().strip("\n") + "\n" + text[text.index(END):]
    root = Path(readme).resolve().parent
    new, copied = TABLE.subn(lambda m: m.group(1) + table_rows(root / m.group(2)) + "\n\n" + m.group(4), new)
    if copied != text.count("<!-- table: ") or copied != text.count("<!-- end of table -->"):
        print(f"{readme}: {text.count('<!-- table: ')} table marker(s), {text.count('<!-- end of table -->')} end "
              f"marker(s), {copied} block(s) copied: give each '<!-- table: PATH ... -->' line its own "
              "'<!-- end of table -->' after the table", file=sys.stderr)
        sys.exit(2)  # bad input: one line, exit code 2, the README untouched
    if new != text:
        Path(readme).write_text(new)


if __name__ == "__main__":
    main(*sys.argv[1:])
