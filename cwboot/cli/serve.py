"""``cwboot serve``: run this machine's head node (store, cache, DHCP, TFTP, HTTP, API)."""

from __future__ import annotations

import argparse

from cwboot.cli.command import add_command, load_config


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args)
    from cwboot.head import serve  # imported here: the head pulls in every service

    return serve(config)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(
        subparsers,
        "serve",
        _serve,
        "run the head node: DHCP, TFTP, HTTP boot and the REST API (until Ctrl+C)",
        epilog="example: cwboot serve --config /etc/cwboot/cwboot.toml --set dhcp.interface=eth1",
    )
