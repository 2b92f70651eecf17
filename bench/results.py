"""bench/RESULTS.md: each benchmark owns one `## ` section and replaces only that one."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(section: str, results: Path = RESULTS) -> None:
    """Replace the section whose heading is `section`'s first line (or add it at the end)."""
    heading = section.splitlines()[0]
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        following = text.find("\n## ", start + len(heading))
        rest = text[following + 1 :] if following != -1 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    results.write_text(text)
