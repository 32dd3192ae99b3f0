"""``cwboot images ...`` / ``cwboot initramfs build`` as a user runs them, and what the initramfs holds."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cwboot(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cwboot", *args, "--set", f"images.store_dir={tmp_path / 'store'}",
           "--set", f"head.state_dir={tmp_path / 'state'}", "--url", "http://127.0.0.1:9", "--token", "t"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWBOOT_")}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def test_import_versions_verify_rollback_remove_gc(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(os.urandom(3 << 20))
    r = cwboot(tmp_path, "images", "import", "img", str(tree))
    assert "img version 1:" in r.stdout
    assert "image object not updated" in r.stderr  # no API here: said, not fatal
    (tree / "b").write_bytes(os.urandom(1 << 20))
    doc = json.loads(cwboot(tmp_path, "images", "import", "img", str(tree), "--json").stdout)
    assert doc["version"] == "2" and 0 < doc["new_chunks"] < doc["chunks"]
    listing = cwboot(tmp_path, "images", "versions").stdout
    assert "img" in listing and listing.rstrip().endswith("*")
    assert "checked" in cwboot(tmp_path, "images", "verify").stdout
    assert "latest is now version 1" in cwboot(tmp_path, "images", "rollback", "img").stdout
    assert cwboot(tmp_path, "images", "rollback", "img", check=False).returncode == 1
    cwboot(tmp_path, "images", "remove", "img", "2")
    gc = cwboot(tmp_path, "images", "gc").stdout
    assert gc.startswith("removed ") and not gc.startswith("removed 0 ")
    chunk = next((tmp_path / "store" / "chunks").rglob("*.zst"))
    chunk.write_bytes(b"garbage")
    bad = cwboot(tmp_path, "images", "verify", check=False)
    assert bad.returncode == 1 and "corrupt (quarantined)" in bad.stdout and "img/1" in bad.stdout


def test_initramfs_build_and_its_tools_run(tmp_path: Path) -> None:
    out = tmp_path / "initrd.gz"
    r = cwboot(tmp_path, "initramfs", "build", "--out", str(out), "--store", "cwboot-initrd")
    assert "modules: none" in r.stdout and "stored as initramfs" in r.stdout
    assert (tmp_path / "store" / "files" / "names" / "cwboot-initrd").exists()
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(
        f"zcat {out} | busybox cpio -id", shell=True, cwd=root, check=True, capture_output=True
    )
    for path in (
        "init",
        "bin/mount_rootfs",
        "bin/busybox",
        "usr/bin/zstd",
        "usr/bin/xxhsum",
        "usr/share/udhcpc/default.script",
    ):
        assert os.access(root / path, os.X_OK), path
    # the copied loader and libraries are enough: run the tools inside the unpacked tree
    block = os.urandom(100_000)
    (root / "tmp" / "raw").write_bytes(block)
    script = "zstd -q -c /tmp/raw > /tmp/f.zst && zstd -q -dc /tmp/f.zst | xxhsum -H2 - && sh -n /bin/mount_rootfs"
    r = subprocess.run(["chroot", str(root), "/bin/busybox", "sh", "-c", f"PATH=/usr/bin:/bin; {script}"],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    import xxhash

    assert r.stdout.split()[0] == xxhash.xxh3_128_hexdigest(block)


def run_on_pty_stderr(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (a user's shell) and stdout on a pipe."""
    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", "cwboot", *args, "--set", f"images.store_dir={tmp_path / 'store'}",
           "--set", f"head.state_dir={tmp_path / 'state'}", "--url", "http://127.0.0.1:9", "--token", "t"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWBOOT_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    seen = bytearray()
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not data:
                break
            seen += data
        out = proc.stdout.read().decode() if proc.stdout else ""
        rc = proc.wait(timeout=120)
    finally:
        os.close(master)
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    return rc, out, seen.decode(errors="replace")


def test_import_progress_bar_on_a_terminal_and_not_when_piped(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(os.urandom(2 << 20))
    rc, out, terminal = run_on_pty_stderr(tmp_path, "images", "import", "img", str(tree))
    assert rc == 0 and "img version 1:" in out
    assert "\rimport img [" in terminal and "100%" in terminal and "MB/s" in terminal
    assert "[" + "#" * 30 + "]" in terminal  # the bar reached its end
    piped = cwboot(tmp_path, "images", "import", "img", str(tree))
    assert "img version 2:" in piped.stdout
    assert "import img [" not in piped.stderr and "%" not in piped.stderr
