"""Kernel modules for the initramfs, resolved against a real Debian kernel (the cloud one, cached)."""

import pytest

from cwboot.control.initramfs import DEFAULT_MODULES, InitramfsError, resolve_modules
from tests.vm.harness import fetch_kernel


def test_default_modules_build_for_a_kernel_without_e1000() -> None:
    kernel = fetch_kernel()
    names = [name for name, _ in resolve_modules(kernel.modules, DEFAULT_MODULES)]
    assert "virtio_net" in names and "overlay" in names
    assert "e1000" not in names  # the cloud kernel has none: an optional NIC driver is skipped
    assert names.index("virtio_net") > names.index("failover")  # dependencies load first


def test_a_missing_required_module_is_an_error() -> None:
    kernel = fetch_kernel()
    with pytest.raises(InitramfsError, match="kernel module e1000 not found"):
        resolve_modules(kernel.modules, ["e1000"], optional=frozenset())
