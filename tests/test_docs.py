"""The docs do what they say: every Python block runs, every nftkit command line is valid, and the
recipe reference matches the recipe files.

A block right after ``<!-- from: PATH -->`` is an excerpt and must appear verbatim in PATH; a Python
block after ``<!-- not-run: reason -->`` is an illustrative fragment and is skipped; every other Python
block runs, in order, in one namespace per page, in a temporary folder, with ``examples/`` importable.
"""
import re
import shlex
import shutil
from pathlib import Path

import pytest

from nftkit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>[a-z]*)\n(?P<body>.*?)\n```", re.S)


def marked(page: Path) -> list[tuple[str, str, str]]:
    """(mark, language, body) of every fenced block; mark is the HTML comment on the line before, if any."""
    return [(m["before"].strip()[4:-3].strip() if m["before"].startswith("<!--") else "", m["lang"], m["body"])
            for m in FENCE.finditer("\n" + page.read_text())]


def blocks(page: Path, lang: str) -> list[str]:
    return [body for mark, language, body in marked(page) if language == lang and not mark]


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
    if "espeak-ng" in page.read_text() and shutil.which("espeak-ng") is None:
        pytest.skip("this page synthesises speech with espeak-ng (apt-get install espeak-ng; make setup does)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
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


EXCERPTS = [(p, mark.removeprefix("from:").strip(), body) for p in PAGES for mark, _, body in marked(p)
            if mark.startswith("from:")]


@pytest.mark.parametrize("page,path,body", EXCERPTS, ids=[f"{p.name}:{path}" for p, path, _ in EXCERPTS])
def test_excerpts_are_verbatim_parts_of_their_files(page, path, body):
    assert body in (ROOT / path).read_text(), f"{page.name}: a block marked 'from: {path}' is not a verbatim part of it"


def test_there_are_docs_to_check():
    assert len(PY_CASES) >= 5 and len(CMD_CASES) >= 5 and len(EXCERPTS) >= 5


def test_recipe_reference_is_current():
    from nftkit.recipe_reference import render_recipe_reference

    assert (ROOT / "docs" / "recipes.md").read_text() == render_recipe_reference(), \
        "docs/recipes.md is stale: run `nftkit recipe docs > docs/recipes.md`"
