"""Building blocks every ``cwboot`` subcommand uses: errors, leaf parsers, the config.

A command module (listed in ``cwboot.cli.COMMAND_MODULES``) exposes
``register(subparsers)`` and creates its commands with ``add_command``, which
gives each leaf the common options (``--json``, ``--url``, ``--token``,
``--config``, ``--set``) so they work before or after the subcommand, and sets
``func``: ``def run(args) -> int``. Expected failures raise ``CliError``;
``main`` prints ``cwboot: <message>`` and exits with its code, no traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cwboot import config as cwconfig

CommandFunc = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """An expected failure: printed as one line, exit status ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_common_options(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """The options every command accepts. On leaves their defaults are SUPPRESS so a value
    given before the subcommand is not overwritten by the leaf's default."""

    def default(value: object) -> object:
        return value if top_level else argparse.SUPPRESS

    parser.add_argument(
        "--config", metavar="PATH", default=default(None),
        help="config file (default: $CWBOOT_CONFIG or /etc/cwboot/cwboot.toml)",
    )
    parser.add_argument(
        "--set", metavar="SECTION.KEY=VALUE", action="append", dest="overrides", default=default([]),
        help="override a config setting (repeatable), e.g. --set api.port=8090",
    )
    parser.add_argument(
        "--url", default=default(None),
        help="API URL (default: $CWBOOT_URL, else http://<api.listen>:<api.port> from the config)",
    )
    parser.add_argument(
        "--token", default=default(None),
        help="API token (default: $CWBOOT_TOKEN, else the admin token file from the config)",
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of a table")


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: CommandFunc | None,
    help: str,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A leaf command ``name`` running ``func(args) -> exit status``, with the common options."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser)
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def add_group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    description: str | None = None,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command with verbs under it (``cwboot nodes ls``); returns the verbs' subparsers."""
    parser = subparsers.add_parser(
        name, help=help, description=description or help, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.set_defaults(func=lambda args: _missing_verb(parser))
    return parser.add_subparsers(title="verbs", metavar="VERB")


def group_verbs(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The verbs of a group another module registered, to add more verbs to it
    (``add_command(group_verbs(subparsers, "images"), "import", ...)``). The module that
    creates the group must come first in COMMAND_MODULES."""
    try:
        parser = subparsers.choices[name]
    except KeyError:
        raise ValueError(f"no command group {name!r} registered yet (check COMMAND_MODULES order)") from None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"command {name!r} has no verbs")


def _missing_verb(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def load_config(args: argparse.Namespace) -> cwconfig.Config:
    """The config named by ``--config`` / $CWBOOT_CONFIG / the default path, with ``--set``s."""
    try:
        return cwconfig.load(getattr(args, "config", None), list(getattr(args, "overrides", []) or []))
    except cwconfig.ConfigError as exc:
        raise CliError(f"config: {exc}") from None
