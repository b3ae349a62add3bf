"""The documentation's examples run: every ```python block in docs/ is executed.

For each page, its python blocks are joined in order into one script and run in a fresh
interpreter, in an empty directory. Lines outside the blocks become blank lines, so a line
number in a traceback is the line number in the Markdown page.

A block fenced as ```python-skip, or whose first line is ``# docs: skip``, is not run.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: A fence line: ``` or ~~~ followed by an info string ("python", "sh", "python-skip", ...).
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([^\s`]*)")
SKIP_MARK = "# docs: skip"
#: Info strings a block may have; anything else is likely a typo that would hide an example.
KNOWN_INFO = {"python", "python-skip", "sh", "text", "toml", "mermaid"}
#: Longest time one page's examples may take; the examples aim for well under 5 seconds.
PAGE_TIMEOUT = 60


@dataclasses.dataclass
class Block:
    info: str
    #: Index of the first line inside the fence.
    start: int
    lines: list[str]
    closed: bool


def code_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order."""
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        fence, info = match.groups()
        end = index + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        blocks.append(Block(info, index + 1, lines[index + 1 : end], closed=end < len(lines)))
        index = end + 1
    return blocks


def runnable_script(text: str) -> str:
    """The page's runnable python blocks, each line at its line number in the page."""
    out = [""] * len(text.splitlines())
    for block in code_blocks(text):
        first = next((line.strip() for line in block.lines if line.strip()), "")
        if block.info == "python" and first != SKIP_MARK:
            out[block.start : block.start + len(block.lines)] = block.lines
    return "\n".join(out) + "\n"


def pages_with_examples() -> list[pathlib.Path]:
    return [
        page
        for page in sorted(DOCS.glob("*.md"))
        if runnable_script(page.read_text(encoding="utf-8")).strip()
    ]


@pytest.mark.parametrize("page", pages_with_examples(), ids=lambda page: page.name)
def test_examples_run(page: pathlib.Path, tmp_path: pathlib.Path) -> None:
    script = tmp_path / f"docs_{page.stem.replace('-', '_')}.py"
    script.write_text(runnable_script(page.read_text(encoding="utf-8")), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFORGE_")}
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"the examples of docs/{page.name} failed (exit code {result.returncode}; "
        f"line numbers are those of the page)\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_every_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)\)", readme))
    pages = {page.name for page in DOCS.glob("*.md")}
    assert pages - linked == set(), "pages missing from README.md's Documentation list"
    assert linked - pages == set(), "README.md links to pages that do not exist"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda page: page.name)
def test_code_blocks_are_well_formed(page: pathlib.Path) -> None:
    for block in code_blocks(page.read_text(encoding="utf-8")):
        where = f"docs/{page.name}:{block.start}"
        assert block.closed, f"{where}: the code block is never closed"
        assert block.info in KNOWN_INFO, f"{where}: unknown code block type {block.info!r}"


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a page (outside code blocks)."""
    inside = {
        i
        for block in code_blocks(text)
        for i in range(block.start - 1, block.start + len(block.lines) + 1)
    }
    found = set()
    for number, line in enumerate(text.splitlines()):
        if number not in inside and (heading := re.match(r"^#{1,6}\s+(.*)$", line)):
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def test_links_between_pages_resolve() -> None:
    pages = {page.name: page.read_text(encoding="utf-8") for page in DOCS.glob("*.md")}
    broken = []
    for name, text in pages.items():
        for target, anchor in re.findall(r"\]\(([\w.-]*\.md)?(?:#([\w-]+))?\)", text):
            target = target or name
            if target not in pages or (anchor and anchor not in anchors(pages[target])):
                broken.append(f"docs/{name}: {target}#{anchor}")
    assert broken == []
