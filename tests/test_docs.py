"""The docs do what they say: every Python block runs, every nftkit command line is valid, and the
recipe reference matches the recipe files.

A Python block is skipped only when the line before its fence is ``<!-- not-run: reason -->``.
"""
import re
import shlex
from pathlib import Path

import pytest

from nftkit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>[a-z]*)\n(?P<body>.*?)\n```", re.S)


def blocks(page: Path, lang: str) -> list[str]:
    return [m["body"] for m in FENCE.finditer("\n" + page.read_text())
            if m["lang"] == lang and not m["before"].startswith("<!-- not-run")]


def commands(page: Path) -> list[list[str]]:
    """nftkit command lines of the shell blocks, continuation lines joined, comments dropped."""
    found = []
    for body in blocks(page, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "-m" in words and words[words.index("-m") + 1:words.index("-m") + 2] == ["nftkit"]:
                words = ["nftkit", *words[words.index("-m") + 2:]]
            if words[:1] == ["nftkit"]:
                found.append(words[1:])
    return found


PY_CASES = [(p, i) for p in PAGES for i in range(len(blocks(p, "python")))]


@pytest.mark.parametrize("page", sorted({p for p, _ in PY_CASES}), ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, body in enumerate(blocks(page, "python")):
        try:
            exec(compile(body, f"{page.name}[python block {i}]", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.name}, python block {i} failed: {err!r}\n{body}") from err


CMD_CASES = [(p, c) for p in PAGES for c in commands(p)]


@pytest.mark.parametrize("page,argv", CMD_CASES, ids=[f"{p.name}:{' '.join(c)[:50]}" for p, c in CMD_CASES])
def test_command_lines_are_valid(page, argv):
    from nftkit.bench import load_suite
    from nftkit.experiment import prepare

    args, extra = build_parser().parse_known_args(argv)
    overrides = [*getattr(args, "overrides", []), *extra]
    assert all("=" in o for o in overrides), f"{page.name}: {argv}"
    if getattr(args, "action", None) == "run":
        prepare(args.name, overrides)  # the recipe exists and every override validates
    elif getattr(args, "action", None) == "show":
        prepare(args.name)
    elif args.command == "bench" and args.name:
        load_suite(args.name, overrides)


def test_there_are_docs_to_check():
    assert len(PY_CASES) >= 5 and len(CMD_CASES) >= 5


def test_recipe_reference_is_current():
    from nftkit.recipe_reference import render_recipe_reference

    assert (ROOT / "docs" / "recipes.md").read_text() == render_recipe_reference(), \
        "docs/recipes.md is stale: run `nftkit recipe docs > docs/recipes.md`"
