"""README command 1's main job: `cwboot demo` serves a demo cluster and a storm boots through it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo's DHCP relay binds port 67")
def test_demo_boots_simulated_nodes_and_says_what_listens_where(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cwboot", "demo", "--nodes", "20", "--image-mib", "2", "--exit",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for service in ("DHCP   udp 127.0.0.1:", "TFTP   udp 127.0.0.1:", "HTTP   tcp", "API    tcp"):
        assert service in out
    assert "boot storm succeeded: 20/20 nodes up" in out
    # Nothing outside the state dir: the store and images live there.
    assert (tmp_path / "state" / "store.sqlite3").exists()
    assert (tmp_path / "state" / "admin.token").exists()
    # The hint names a cwboot a newcomer can run (the venv's is not on their PATH).
    hint = next(line for line in out.splitlines() if " nodes ls " in line)
    cli = hint.split()[0]
    assert Path(cli).is_file() or shutil.which(cli), hint
