"""The docs: generated pages are current, links resolve, and the README stays a front door."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # the generator is not in the package
import docgen

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 200
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("name", [docgen.CLI_PAGE, docgen.RESULTS_PAGE])
def test_generated_pages_are_current(name: str) -> None:
    page = DOCS / name
    assert page.is_file(), f"docs/{name} is missing: run `make docs`"
    assert page.read_text(encoding="utf-8") == docgen.pages()[name], f"docs/{name} is stale: run `make docs`"


def test_pages_cover_the_code() -> None:
    pages = docgen.pages()
    cli, results = pages[docgen.CLI_PAGE], pages[docgen.RESULTS_PAGE]
    for flag in ("`--max-test`", "`--train-sizes`", "`--target-field`", "`--resume`", "`--port`"):
        assert flag in cli
    for command in ("run", "report", "prepare-model", "serve"):
        assert f"## `fewtune {command}`" in cli
    for key in ("`train_seconds`", "`schema_version`", "`recommendation`", "`p95`", "`analysis.json`"):
        assert key in results


def test_a_new_record_field_changes_the_page() -> None:
    """What makes test_generated_pages_are_current fail when MethodRow grows without `make docs`."""
    source = docgen.RECORD_SOURCE.read_text(encoding="utf-8")
    anchor = "    # identity\n"
    assert anchor in source
    grown = source.replace(anchor, anchor + '    warmup_seconds: float\n    """Seconds of warm-up."""\n', 1)
    page = docgen.results_format(grown)
    assert page != docgen.results_format(source)
    assert "| `warmup_seconds` | number | Seconds of warm-up. |" in page


def test_every_record_field_is_described() -> None:
    records = docgen.record_fields(docgen.RECORD_SOURCE.read_text(encoding="utf-8"))
    assert {"RunResults", "MethodRow", "Latency", "Costs"} <= set(records)
    undescribed = [
        f"{name}.{key}" for name, (_, fields) in records.items() for _, key, _, doc in fields if not doc
    ]
    assert not undescribed, f"add a docstring under these fields in src/fewtune/record.py: {undescribed}"


def test_check_names_stale_pages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert docgen.main(["--check", "--docs", str(tmp_path)]) == 1
    assert "cli.md is stale: run `make docs`" in capsys.readouterr().err
    assert docgen.main(["--docs", str(tmp_path)]) == 0
    assert docgen.main(["--check", "--docs", str(tmp_path)]) == 0


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def test_readme_is_a_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES, "README.md: move reference material to docs/"
    first_block = FENCE.search(text)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).strip().splitlines()]
    assert commands[:2] == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^docs:", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
