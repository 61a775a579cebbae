"""The ``nftkit`` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import NftkitError


def _recipe_list(args) -> None:
    from .recipe import list_recipes, recipe_text

    for name in list_recipes(args.pattern):
        first = next((l for l in recipe_text(name).splitlines() if l.startswith("description:")), "")
        print(f"{name:40s} {first.removeprefix('description:').strip()}")


def _recipe_show(args) -> None:
    from .recipe import recipe_text

    sys.stdout.write(recipe_text(args.name))


def _recipe_run(args) -> None:
    from .experiment import run

    run(args.name, args.overrides, Path(args.out) if args.out else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nftkit", description="Remove backdoors from trained neural networks.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    recipe = sub.add_parser("recipe", help="list, show and run recipes").add_subparsers(dest="action", required=True)
    p = recipe.add_parser("list", help="list recipes")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=_recipe_list)
    p = recipe.add_parser("show", help="print a recipe")
    p.add_argument("name")
    p.set_defaults(func=_recipe_show)
    p = recipe.add_parser("run", help="run a recipe: attack (cached), purify, evaluate, report")
    p.add_argument("name", help="recipe name (see 'nftkit recipe list') or path to a .yaml file")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. defense.steps=200 seed=1")
    p.add_argument("--out", help="output folder (must not hold another run); default runs/<recipe>/<time>")
    p.set_defaults(func=_recipe_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except NftkitError as err:
        if args.debug:
            raise
        print(f"nftkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nftkit: interrupted; nothing was written for the unfinished run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
