"""The ``cwboot`` command (also ``python -m cwboot``).

Each name in COMMAND_MODULES is a module of this package exposing
``register(subparsers)``; append yours to add a command (see docs/cli.md).
Exit status: 0 success, 1 an error (printed as one ``cwboot: ...`` line),
2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import cwboot
from cwboot.cli.command import CliError, add_common_options

# Order matters only where a module adds verbs to another's group (image_ops after images).
COMMAND_MODULES: list[str] = [
    "serve",
    "nodes",
    "bootconfigs",
    "images",
    "image_ops",
    "pools",
    "status",
    "heads",
    "stats",
    "bench",
    "power",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cwboot",
        description="cwboot: network-boot server for HPC clusters. "
        "Run a head node (serve) and manage nodes, boot configs, images and pools through its REST API.",
        epilog="Connection: --url/--token, else $CWBOOT_URL/$CWBOOT_TOKEN, else the config file "
        "(api.listen, api.port and the admin token file).",
    )
    parser.add_argument("--version", action="version", version=f"cwboot {cwboot.__version__}")
    add_common_options(parser, top_level=True)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"cwboot.cli.{name}").register(subparsers)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse, plus: words left over after options go to the leaf's ``words_dest`` list, so
    ``cwboot nodes update n[0-3] --boot-config x groups=gpu`` works in any order."""
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "words_dest", None)
    if extra and dest is not None and not any(word.startswith("-") for word in extra):
        getattr(args, dest).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cwboot`` with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except CliError as exc:
        print(f"cwboot: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cwboot: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
