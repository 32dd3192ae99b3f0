"""A real etcd server for tests: Debian's /usr/bin/etcd on 127.0.0.1, random free ports, temp data dir.

Use it directly::

    with EtcdServer(tmp_path) as etcd:
        store = EtcdStore([etcd.endpoint])

or through the ``etcd_server`` (session) / ``etcd_store`` fixtures registered
in tests/control/conftest.py. The server is stopped by its PID (SIGTERM, then
SIGKILL) even when the test fails; ``stop()``/``start()`` let a test cut etcd
away and bring it back on the same port and data.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *, extra_args: tuple[str, ...] = ()) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="cwboot-etcd-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.extra_args = extra_args
        self.client_port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "etcd.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd (keeping the ports of an earlier start) and wait until it is healthy."""
        for attempt in range(5):
            if not self.client_port or attempt:
                self.client_port, self.peer_port = free_port(), free_port()
            peer = f"http://127.0.0.1:{self.peer_port}"
            args = [
                ETCD,
                "--name=cwboot-test",
                f"--data-dir={self.data_dir / 'data'}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=cwboot-test={peer}",
                "--log-level=error",
                *self.extra_args,
            ]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            if self._wait_healthy(timeout):
                return
            self.stop()
        raise RuntimeError(f"etcd did not start; see {self.log_path}:\n{self.log_path.read_text()[-2000:]}")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if b'"true"' in response.read():
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL after 5 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl (API v3) against this server; returns stdout, raises on failure."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        result = subprocess.run(
            [ETCDCTL, f"--endpoints={self.url}", *args], env=env, capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def wipe(self) -> None:
        """Delete every key (tests share one server; revisions keep growing, which is fine)."""
        from cwboot.control.store.etcd import etcd3, etcdrpc  # etcd3, imported without its warnings

        client = etcd3.client("127.0.0.1", self.client_port, timeout=10)
        try:
            client.kvstub.DeleteRange(etcdrpc.DeleteRangeRequest(key=b"\0", range_end=b"\0"), 10)
        finally:
            client.close()

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
