"""The ``nftkit`` command."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import Interrupted, NftkitError


def _recipe_list(args) -> None:
    from .recipe import list_recipes, recipe_text

    for name in list_recipes(args.pattern):
        first = next((l for l in recipe_text(name).splitlines() if l.startswith("description:")), "")
        print(f"{name:40s} {first.removeprefix('description:').strip()}")


def _recipe_show(args) -> None:
    from .recipe import recipe_text

    sys.stdout.write(recipe_text(args.name))


def _log(*parts) -> None:
    from .distributed import is_main

    if is_main():
        print(*parts, flush=True)


def _recipe_docs(args) -> None:
    from .recipe_reference import render_recipe_reference

    sys.stdout.write(render_recipe_reference())


def _recipe_run(args) -> None:
    from .experiment import run

    run(args.name, args.overrides, Path(args.out) if args.out else None, log=_log, resume=args.resume)


def _bench(args) -> None:
    from .bench import list_suites, run_suite

    if args.list:
        print("\n".join(list_suites()))
        return
    if not args.name:
        raise NftkitError("name a benchmark suite, e.g. 'nftkit bench image/fmnist' (see 'nftkit bench --list')")
    run_suite(args.name, args.overrides, Path(args.out) if args.out else None, log=_log)


def _purify(args) -> None:
    from .byom import purify_checkpoint

    purify_checkpoint(args.model, args.arch, args.adapter, args.data, args.overrides, out=args.out,
                      method=args.method, test=args.test, attack=args.attack, num_classes=args.num_classes,
                      resume=args.resume, log=_log)


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
    p = recipe.add_parser("docs", help="print the recipe reference (docs/recipes.md) generated from the recipe files")
    p.set_defaults(func=_recipe_docs)
    p = recipe.add_parser("run", help="run a recipe: attack (cached), purify, evaluate, report")
    p.add_argument("name", help="recipe name (see 'nftkit recipe list') or path to a .yaml file")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. defense.steps=200 seed=1")
    p.add_argument("--out", help="output folder (must not hold another run); default runs/<recipe>/<time>")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run of --out")
    p.set_defaults(func=_recipe_run)

    p = sub.add_parser("purify", help="purify your own checkpoint with your own clean data")
    p.add_argument("--model", required=True, help="checkpoint: .safetensors or a torch.save'd state_dict (never unpickled)")
    p.add_argument("--arch", required=True, help="registered model name (e.g. preactresnet18, resnet18) or module:Class")
    p.add_argument("--adapter", default="image", help="domain adapter (default: image)")
    p.add_argument("--data", required=True, help="clean data: an ImageFolder folder or a tensor file (images, labels)")
    p.add_argument("--test", help="test data in the same form, to measure ACC (and ASR with --attack)")
    p.add_argument("--attack", help="attack whose trigger to test ASR with, e.g. badnets; attack.key=value sets its options")
    p.add_argument("--method", default="nft", help="purification method (default: nft)")
    p.add_argument("--num-classes", type=int, help="number of classes (default: from the data)")
    p.add_argument("--out", help="output folder; default runs/purify/<time>")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run of --out")
    p.add_argument("overrides", nargs="*", help="config keys, e.g. steps=500 lr=0.05 model.width=16 attack.target=0")
    p.set_defaults(func=_purify)

    p = sub.add_parser("bench", help="run a benchmark suite: methods x attacks on shared cached victims, one table")
    p.add_argument("name", nargs="?", help="suite name, e.g. image/fmnist")
    p.add_argument("overrides", nargs="*", help="suite keys, e.g. overrides=[data.train_limit=5000]")
    p.add_argument("--list", action="store_true", help="list the suites")
    p.add_argument("--out", help="output folder; default runs/bench/<suite>/<time>")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options too
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from . import distributed
    from .cpu_kernels import SWITCH, pin_portable_kernels
    from .host_memory import keep_freed_memory

    keep_freed_memory()
    try:
        if os.environ.get(SWITCH, "0") == "1":
            pin_portable_kernels()
        distributed.init_from_env()
        args.func(args)
    except Interrupted as err:
        print(f"nftkit: {err}", file=sys.stderr)
        return 130
    except NftkitError as err:
        if args.debug:
            raise
        print(f"nftkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nftkit: interrupted; nothing was written for the unfinished run", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
