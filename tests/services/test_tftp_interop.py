"""Real TFTP clients (tftp-hpa, atftp, curl, busybox) against cwboot over a clean and a lossy veth link.

The lossy link drops 3% of the packets (toward the client, or both ways):
with ``tc netem`` plus 2 ms delay where the kernel has sch_netem; without it
(the development VM's kernel) with an nftables drop and NO added delay. What
was applied is in each case's ``link`` property and in its failure message.

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
from collections.abc import Callable, Iterator
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
        with proc.stdout:  # read to the end only by the last test; closed even when it did not run
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


CURL_ON_LOSS = (
    "curl 7.88 acts on a retransmitted DATA only when its own retry timer fires (5-10 s per "
    "lost packet; cwboot retransmitted each lost block once within 0.25 s): 35-100 s for this "
    "150 kB file over 3% loss toward the client, and not finished in 120 s with loss both ways "
    "-- longer than a single case may take"
)
# Cases a client cannot pass here for reasons of its own (measured against cwboot on the
# nft-loss link, no delay). atftp without options recovers from lost ACKs by its own
# 1 s timeout (6/6 runs both ways, 3-7 s each).
CLIENT_LIMITS = {
    ("atftp-blksize-windowsize", "lossy-both-ways"): (
        "atftp 0.8 aborts ('tftp: unexpected OACK') when its ACK of the OACK is lost and the "
        "server retransmits the OACK as RFC 2347 asks: a client bug, hit a few runs in a hundred"
    ),
    ("curl", "lossy-to-client"): CURL_ON_LOSS,
    ("curl", "lossy-both-ways"): CURL_ON_LOSS,
    ("curl-blksize", "lossy-to-client"): CURL_ON_LOSS,
    ("curl-blksize", "lossy-both-ways"): CURL_ON_LOSS,
}


@pytest.mark.parametrize("link", ["clean", "lossy-to-client", "lossy-both-ways"])
@pytest.mark.parametrize("client", CLIENTS)
def test_real_client_fetches_exact_bytes(
    setup: Setup,
    tmp_path: Path,
    client: str,
    link: str,
    record_property: Callable[[str, object], None],
) -> None:
    if (client, link) in CLIENT_LIMITS:
        pytest.skip(CLIENT_LIMITS[client, link])
    if link == "clean":
        applied = setup.net.impair(delay_ms=1)
    else:
        applied = setup.net.impair(
            loss_percent=3, delay_ms=2, toward="both" if link.endswith("ways") else "client"
        )
    record_property("link", applied)
    out = tmp_path / "got"
    result = setup.net.run("client", client_commands(out)[client], timeout=60, cwd=tmp_path)
    assert result.returncode == 0, f"link: {applied}\n{result.stderr}"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == setup.digest, f"link: {applied}"


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
    # MTU 1200 - 20 (IPv4) - 8 (UDP) - 4 (TFTP) = 1168, from the MTU test. Not records[-1]:
    # a lossy round's transfer can end on the server (its last DATA retransmitted until
    # the timeout) after the MTU test's, and did once in CI.
    assert any(r["blksize"] == 1168 for r in records), [r["blksize"] for r in records]
    assert all(r["duration"] is not None and r["packets_sent"] > 0 for r in records)
    # The lossy rounds really lost packets and the server recovered by retransmitting.
    assert summary["retransmits"] > 0
