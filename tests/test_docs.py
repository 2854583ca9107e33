"""The repository is self-contained: nothing it ships points a reader outside of it.

A user of the repository can open only what is in it, so README, docs, docstrings, notebooks and
the OpenAPI description cite ``docs/design.md``, never a design file kept beside the checkout.
Every relative Markdown link must also land on a file of the repository, and a link into a
Markdown file with ``#anchor`` on one of its headings, so the README's and the docs' links do
not rot when a file or a section is renamed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
# Case-sensitive on purpose: ``docs/design.md`` is the repository's own design document.
OUTSIDE = ("../shared", "shared/DESIGN", "DESIGN.md")
_SKIP_DIRS = {".git", ".venv", "__pycache__", ".nextstep", ".pytest_cache", ".ruff_cache"}
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _tracked_files() -> list[Path]:
    """Files under version control (every file of the tree when this is not a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not _SKIP_DIRS & set(p.relative_to(ROOT).parts)
        ]
    assert names, "no files found: the check would pass vacuously"
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # a binary file: nothing a reader follows
        return None


FILES = _tracked_files()
MARKDOWN = sorted(p for p in FILES if p.suffix == ".md")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE)}


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = []
    for path in FILES:
        if path == THIS:
            continue
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for needle in OUTSIDE:
                if needle in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {needle!r}")
    assert not offenders, "links out of the repository (cite docs/design.md):\n" + "\n".join(
        offenders
    )


def test_the_design_doc_and_the_performance_doc_exist() -> None:
    for name in ("design.md", "performance.md", "deployment.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_markdown_links_land_inside_the_repository(doc: Path) -> None:
    broken = []
    for target in _LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: …
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.is_relative_to(ROOT) or not dest.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text("utf-8")):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checks_can_fail(tmp_path: Path) -> None:
    """The slug rule is GitHub's on the headings this repository uses."""
    assert _slug("5. Command line (contract)") == "5-command-line-contract"
    assert _slug("7a. The simulator as a measuring instrument") == (
        "7a-the-simulator-as-a-measuring-instrument"
    )
    assert _slug("`next-step:batch`") == "next-stepbatch"
    assert "1-the-domain-the-micro-commitment-funnel" in _anchors(
        "## 1. The domain: the micro-commitment funnel\n"
    )


def test_the_openapi_description_points_to_the_design_doc(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path))  # the schema needs no lifespan, no model
    description = app.openapi()["info"]["description"]
    assert "docs/design.md" in description
    assert (ROOT / "docs" / "design.md").is_file()
