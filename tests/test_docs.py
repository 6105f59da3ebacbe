"""The documents the code cites exist, with the sections it names (issue 23, item 5).

Code, help texts and configs cite the method description as ``docs/<name>.md, "Section"``.
These tests fail when a cited file is missing, when a cited section is not a heading of that
file (e.g. after a heading was renamed), or when anything still cites the old internal note
instead of ``docs/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Where citations are looked for: the package, its tests, recipes, benchmarks and documents.
SCANNED = ("src", "tests", "configs", "benchmarks", "docs", "README.md")
TEXT_SUFFIXES = frozenset({".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".txt", ".json", ".html",
                           ".js", ".css", ".ini"})
SKIPPED_DIRS = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules"})
#: The old citation target (spelled in two pieces so this file does not cite it itself).
OLD_NOTE = "METHOD" + ".md"
#: Sections the method description must keep: the code cites them by these names.
METHOD_SECTIONS = ("Motion representation", "Network", "Training", "Inference", "Evaluation protocol",
                   "Differences from the released code", "Released checkpoint layout")

# A cited document: docs/<name>.md, not part of a longer path or a URL.
_DOC = re.compile(r"(?<![\w/.-])docs/(?P<name>[\w.-]+\.md)\b")
# Between the pieces of a citation: spaces, line breaks and the comment markers of a wrapped line.
_GAP = r"(?:\s|#:?(?=\s))*"
# Right after the path: an optional markdown link target or closing parenthesis, a comma, and
# the first quoted section; then more sections joined by "," or "and".
_FIRST = re.compile(rf"(?:\]\([^)\s]*\))?\)?{_GAP},{_GAP}(?P<q>[\"'])(?P<section>[^\"'\n]{{1,80}})(?P=q)")
_NEXT = re.compile(rf"{_GAP}(?:,|and){_GAP}(?P<q>[\"'])(?P<section>[^\"'\n]{{1,80}})(?P=q)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")


def _text_files() -> Iterator[Path]:
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            yield path
            continue
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(ROOT).parts
            if any(p in SKIPPED_DIRS or p.endswith(".egg-info") for p in rel):
                continue
            if f.is_file() and f.suffix in TEXT_SUFFIXES:
                yield f


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _where(path: Path, text: str, pos: int) -> str:
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"{name}:{text.count(chr(10), 0, pos) + 1}"


def headings(doc: Path) -> list[str]:
    """The headings of a markdown file (any level), outside fenced code blocks."""
    out, fenced = [], False
    for line in _read(doc).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            out.append(m.group("title"))
    return out


def citations(path: Path) -> list[tuple[str, str, list[str]]]:
    """``(where, name, sections)`` for every ``docs/<name>.md`` in ``path`` (sections may be empty)."""
    text = _read(path)
    out = []
    for m in _DOC.finditer(text):
        sections = []
        first = _FIRST.match(text, m.end())
        if first:
            sections.append(first.group("section"))
            pos = first.end()
            while (more := _NEXT.match(text, pos)) is not None:
                sections.append(more.group("section"))
                pos = more.end()
        out.append((_where(path, text, m.start()), m.group("name"), sections))
    return out


def _all_citations() -> list[tuple[str, str, list[str]]]:
    this = Path(__file__).resolve()
    return [c for f in _text_files() if f.resolve() != this for c in citations(f)]


def test_nothing_cites_the_old_internal_note():
    hits = []
    for f in _text_files():
        text = _read(f)
        hits += [_where(f, text, m.start()) for m in re.finditer(re.escape(OLD_NOTE), text)]
    assert not hits, (
        f"{len(hits)} citation(s) of {OLD_NOTE}, a file users do not have; cite docs/method.md with the "
        "section name instead: " + ", ".join(hits)
    )


def test_method_doc_keeps_the_cited_sections():
    doc = DOCS / "method.md"
    assert doc.is_file(), "docs/method.md is missing"
    have = headings(doc)
    missing = [s for s in METHOD_SECTIONS if s not in have]
    assert not missing, f"docs/method.md lost the heading(s) {missing} that the code cites; its headings: {have}"


def test_cited_documents_and_sections_exist():
    found = _all_citations()
    assert any(name == "method.md" and sections for _, name, sections in found), (
        "no citation of docs/method.md with a section found: the citation pattern no longer matches the code"
    )
    problems = []
    cache: dict[str, list[str]] = {}
    for where, name, sections in found:
        doc = DOCS / name
        if not doc.is_file():
            problems.append(f"{where}: cites docs/{name}, which does not exist")
            continue
        have = cache.setdefault(name, headings(doc))
        for section in sections:
            if section not in have:
                problems.append(f"{where}: cites docs/{name}, {section!r}, not a heading there (headings: {have})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_relative_markdown_links_resolve(doc):
    path = ROOT / doc
    text = _read(path)
    broken = []
    for m in re.finditer(r"\]\((?P<target>[^)\s#]+\.md)(?:#[^)\s]*)?\)", text):
        target = m.group("target")
        if "://" in target:
            continue
        if not (path.parent / target).is_file():
            broken.append(f"{_where(path, text, m.start())}: {target}")
    assert not broken, "links to missing markdown files: " + ", ".join(broken)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('see docs/method.md, "Inference"', [("method.md", ["Inference"])]),
        ("(docs/method.md, 'Inference').", [("method.md", ["Inference"])]),
        ('(docs/method.md,\n#: "Released checkpoint layout")', [("method.md", ["Released checkpoint layout"])]),
        ('(docs/method.md, "Inference" and\n"Training")', [("method.md", ["Inference", "Training"])]),
        ('([docs/method.md](docs/method.md), "Evaluation protocol")',
         [("method.md", ["Evaluation protocol"]), ("method.md", ["Evaluation protocol"])]),
        ('"see docs/tasks.md", "not a section"', [("tasks.md", [])]),
        ("https://example.org/docs/method.md and src/docs/x.md", []),
    ],
)
def test_citation_pattern(tmp_path, snippet, expected):
    f = tmp_path / "x.py"
    f.write_text(snippet)
    assert [(name, sections) for _, name, sections in citations(f)] == expected
