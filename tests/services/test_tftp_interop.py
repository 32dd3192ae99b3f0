"""Real TFTP clients (tftp-hpa, atftp, curl, busybox) against cwboot over a veth link with netem.

cwboot runs as its own process in the server namespace
(``python -m cwboot.services.tftp``); every client runs in the client
namespace; the fetched file's SHA-256 must equal the served one. The
namespaces and every process are removed by PID when the module ends.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.tftp_netns import SERVER, TftpNetns

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
SIZE = 150_000


@dataclass
class Setup:
    net: TftpNetns
    root: Path
    proc: subprocess.Popen[str]
    port: int
    digest: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("tftproot")
    (root / "payload").write_bytes(random.Random(42).randbytes(SIZE))
    with TftpNetns() as net:
        proc = net.spawn(
            "server",
            [
                sys.executable,
                "-m",
                "cwboot.services.tftp",
                "--root",
                str(root),
                "--listen",
                SERVER,
                "--port",
                "69",
                "--set",
                "timeout=0.25",
                "--set",
                "retries=20",
                "--recent",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        yield Setup(
            net, root, proc, port, hashlib.sha256((root / "payload").read_bytes()).hexdigest()
        )


def client_commands(out: Path) -> dict[str, list[str]]:
    return {
        # tftp-hpa 5.2 sends no options: plain RFC 1350 lockstep, 512-byte blocks.
        "tftp-hpa": ["tftp", "-m", "binary", SERVER, "-c", "get", "payload", str(out)],
        "atftp": ["atftp", "--tftp-timeout", "1", "-g", "-r", "payload", "-l", str(out), SERVER],
        "atftp-blksize-windowsize": [
            "atftp",
            "--tftp-timeout",
            "1",
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 16",
            "-g",
            "-r",
            "payload",
            "-l",
            str(out),
            SERVER,
        ],
        "curl": ["curl", "-sS", "--max-time", "40", "-o", str(out), f"tftp://{SERVER}/payload"],
        "curl-blksize": [
            "curl",
            "-sS",
            "--max-time",
            "40",
            "--tftp-blksize",
            "1468",
            "-o",
            str(out),
            f"tftp://{SERVER}/payload",
        ],
        "busybox": ["busybox", "tftp", "-g", "-b", "1468", "-r", "payload", "-l", str(out), SERVER],
    }


CLIENTS = list(client_commands(Path("x")))


# Which clients survive which loss. atftp re-ACKs a repeated block once and
# then ignores it, so two lost ACKs in a row stall it (both-ways loss).
# curl 7.88 stalls on any loss, against in.tftpd just the same (checked by
# hand: `curl tftp://` through 3% loss toward the client times out with both
# servers), so curl runs on the clean link only. atftp with options aborts
# ("tftp: unexpected OACK") when its ACK of the OACK is lost and the server
# retransmits the OACK as RFC 2347 asks; with loss toward the server that hits
# a few runs in a hundred (seen in CI), so it runs with loss toward the client only.
SURVIVES = {
    "lossy-to-client": {"tftp-hpa", "atftp", "atftp-blksize-windowsize", "busybox"},
    "lossy-both-ways": {"tftp-hpa", "busybox"},
}


@pytest.mark.parametrize("link", ["clean", "lossy-to-client", "lossy-both-ways"])
@pytest.mark.parametrize("client", CLIENTS)
def test_real_client_fetches_exact_bytes(
    setup: Setup, tmp_path: Path, client: str, link: str
) -> None:
    if link in SURVIVES and client not in SURVIVES[link]:
        pytest.skip(f"{client} does not recover from this loss with any server (see SURVIVES)")
    if link == "clean":
        setup.net.impair(delay_ms=1)
    else:
        setup.net.impair(
            loss_percent=3, delay_ms=2, toward="both" if link.endswith("ways") else "client"
        )
    out = tmp_path / "got"
    result = setup.net.run("client", client_commands(out)[client], timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == setup.digest


def test_blksize_is_clamped_to_the_path_mtu(setup: Setup, tmp_path: Path) -> None:
    net = setup.net
    net.impair()
    for ns, ifname in ((net.server_ns, net.server_if), (net.client_ns, net.client_if)):
        subprocess.run(
            ["ip", "-n", ns, "link", "set", ifname, "mtu", "1200"], check=True, timeout=30
        )
    try:
        out = tmp_path / "got"
        result = net.run("client", client_commands(out)["atftp-blksize-windowsize"], timeout=60)
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(out.read_bytes()).hexdigest() == setup.digest
    finally:
        for ns, ifname in ((net.server_ns, net.server_if), (net.client_ns, net.client_if)):
            subprocess.run(
                ["ip", "-n", ns, "link", "set", ifname, "mtu", "1500"], check=True, timeout=30
            )


def test_windowsize_and_blksize_were_negotiated_and_stats_kept(setup: Setup) -> None:
    setup.net.impair()
    setup.net.kill(setup.proc, signal.SIGTERM)
    out, _ = setup.proc.communicate(timeout=20)
    summary = json.loads(out.strip().splitlines()[-1])
    records = summary["recent"]
    assert summary["outcomes"].get("completed", 0) >= 2 * len(CLIENTS)
    assert any(r["windowsize"] == 16 and r["blksize"] == 1468 for r in records)
    # MTU 1200 - 20 (IPv4) - 8 (UDP) - 4 (TFTP) = 1168, from the MTU test.
    assert records[-1]["blksize"] == 1168
    assert all(r["duration"] is not None and r["packets_sent"] > 0 for r in records)
    # The lossy rounds really lost packets and the server recovered by retransmitting.
    assert summary["retransmits"] > 0
