"""The child side of ``tftp.own_process``: the TFTP service in a process of its own, reporting its counters.

    python -m cwboot.tftp_process --root DIR --listen ADDR --port N [--set KEY=VALUE ...] [--report-every S]

Writes JSON lines to stdout: first ``{"address": ..., "port": ...}`` once bound,
then ``{"stats": {...}}`` (the ``TftpStats`` counters, without the per-transfer
records) at once and again whenever they changed, at most every ``--report-every``
seconds. The head (``cwboot.head.serve_tftp_process``) reads every line, so the
pipe never fills. Stops on SIGTERM/SIGINT (the head kills it by PID when it stops),
when its stdin reaches end of file (the head holds the other end of that pipe, so
the child exits even when the head was killed with SIGKILL and could not stop it),
and when a report cannot be written because the head is gone.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Collection
from typing import Any

import trio

from cwboot.config import ConfigError, tftp_from_settings
from cwboot.services.tftp import TftpServer, TftpStats, serve_tftp

# TftpStats fields left out of the reports (up to RECENT_TRANSFERS records: too big to send each time).
NOT_REPORTED = ("recent",)


def counters_of(stats: Any, skip: Collection[str] = NOT_REPORTED) -> dict[str, Any]:
    """The fields of a stats dataclass as plain JSON values: Counters as dicts with string keys."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(stats):
        if f.name in skip:
            continue
        value = getattr(stats, f.name)
        if isinstance(value, collections.Counter):
            # dict() copies in one C call, so a worker thread adding a key meanwhile (the
            # DHCP receive loop counts in one) cannot break the iteration below.
            snapshot = dict(value)
            value = {str(k): snapshot[k] for k in sorted(snapshot, key=str)}
        out[f.name] = value
    return out


def _write_line(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def report_stats(stats: TftpStats, every: float) -> None:
    """Write the counters now, then whenever they changed, checking every ``every`` seconds."""
    last: dict[str, Any] | None = None
    while True:
        now = counters_of(stats)
        if now != last:
            _write_line({"stats": now})
            last = now
        await trio.sleep(every)


async def exit_when_parent_gone(cancel_scope: trio.CancelScope) -> None:
    """Cancel ``cancel_scope`` at end of file on stdin: the head that holds the pipe is gone."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass
    cancel_scope.cancel()


async def _main(args: argparse.Namespace) -> None:
    try:
        config = tftp_from_settings(args.listen, args.port, args.set)
    except ConfigError as exc:
        raise SystemExit(f"cwboot.tftp_process: {exc}") from None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server: TftpServer = await nursery.start(
                lambda task_status: serve_tftp(config, root=args.root, task_status=task_status)
            )
            _write_line({"address": server.address, "port": server.port})
            nursery.start_soon(report_stats, server.stats, args.report_every)
            if args.stdin_is_parent:
                nursery.start_soon(exit_when_parent_gone, nursery.cancel_scope)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cwboot.tftp_process", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TftpConfig field")
    parser.add_argument(
        "--report-every", type=float, default=1.0, metavar="SECONDS", help="how often to check the counters"
    )
    parser.add_argument(
        "--stdin-is-parent", action="store_true",
        help="stdin is a pipe from the parent: exit when it reaches end of file (the parent died)",
    )  # fmt: skip
    try:
        trio.run(_main, parser.parse_args(argv))
    except* BrokenPipeError:
        # The head is gone: nobody to serve for. Silence the final flush of stdout too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
