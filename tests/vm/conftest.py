"""Fixtures of the real-VM tests: the cached Debian kernel, a work folder kept on failure."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.vm.harness import REPO, Kernel, fetch_kernel

ARTIFACTS = REPO / "artifacts" / "vm"
# What is worth keeping of a failed run: serial consoles, QEMU's stderr, the servers' logs.
KEPT = ("*.log", "*.stderr", "*.conf", "*.toml", "boot.ipxe")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    if os.geteuid() != 0:
        pytest.skip("VM tests create network namespaces and tap devices: run them as root")
    return fetch_kernel()


@pytest.fixture
def vm_workdir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """The test's folder; on failure its logs are copied to artifacts/vm/<test>/."""
    yield tmp_path
    report = getattr(request.node, "report_call", None)
    if report is not None and report.passed:
        return
    dest = ARTIFACTS / re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for pattern in KEPT:
        for path in tmp_path.rglob(pattern):
            shutil.copyfile(path, dest / path.name)
