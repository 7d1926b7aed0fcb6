"""Every relative link in the repository's Markdown (README.md, docs/, deploy/) reaches a file in the
repository, and a link's #anchor a heading of the page it names (GitHub's slugs), so the docs cannot
point at nothing."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted({*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md"), *ROOT.glob("deploy/**/*.md")})

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")  # [text](target "title"), ![alt](target)
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)  # [label]: target
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"""<a\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)


def prose(text: str) -> str:
    """`text` without code blocks and code spans, where a link is only an example."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return [m.group(1) for pattern in (INLINE_LINK, REFERENCE, HTML_LINK) for m in pattern.finditer(body)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor `page` has: a slug per heading (GitHub numbers repeats: x, x-1, x-2) and explicit ids."""
    text = page.read_text(encoding="utf-8")
    found, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found | set(HTML_ANCHOR.findall(text))


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with each relative link of `page` (a page of the repository at `root`), one line each."""
    bad = []
    for target in links(page.read_text(encoding="utf-8")):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # a URL with a scheme (https:, mailto:) is not ours to check here
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?")[0])
        resolved = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(root)}: {target}"
        if not resolved.is_relative_to(root):
            bad.append(f"{where} points outside the repository")
        elif not resolved.exists():
            bad.append(f"{where} names no file")
        elif anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved):
            bad.append(f"{where}: {resolved.name} has no heading whose anchor is #{anchor}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(page: Path):
    bad = broken_links(page)
    assert not bad, "links that point at nothing:\n" + "\n".join(bad)


def test_the_pages_checked_include_the_readme_and_docs():
    names = {str(p.relative_to(ROOT)) for p in PAGES}
    assert {"README.md", "docs/configuration.md", "docs/architecture.md", "deploy/README.md"} <= names


def test_a_missing_file_outside_path_and_unknown_heading_are_each_found(tmp_path):
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    (tmp_path / "here.md").write_text("# Getting `started`, quickly!\n\n## Notes\n## Notes\n", encoding="utf-8")
    page.write_text(
        "[ok](../here.md#getting-started-quickly) [ok too](../here.md#notes-1) [ok](#own) [web](https://example.com/x)\n"
        "# Own\n"
        "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n"
        "[gone](nowhere.md) [out](../../elsewhere.md) [bad anchor](../here.md#nope)\n"
        '<img src="missing.png">\n[ref]: ../missing.md\n',
        encoding="utf-8")
    bad = broken_links(page, root=tmp_path)
    assert [line.split(": ", 1)[1] for line in bad] == [
        "nowhere.md names no file",
        "../../elsewhere.md points outside the repository",
        "../here.md#nope: here.md has no heading whose anchor is #nope",
        "../missing.md names no file",
        "missing.png names no file",
    ]
