"""The iPXE script a node gets: sans-IO renderer from (node, boot config, live heads).

iPXE reads a script line by line, splits arguments on whitespace, expands
``${setting}`` and treats ``||``, ``&&``, ``#`` and ``:label`` specially. So
nothing that comes from an object may carry any of those: every value is
checked against a conservative character set and a ``ScriptError`` names the
offending field instead of rendering it. Kernel command lines may contain
letters, digits, spaces and ``,._=:/+@%-~[]`` (enough for ``console=ttyS0,115200n8``,
``root=UUID=...``, ``quiet``, ``net.ifnames=0``); anything else (``$``, ``|``, ``&``,
``#``, ``;``, quotes, backslash, control characters) is refused.

The script tries every live head in turn for the kernel and the initramfs
(``||`` chains) and loops back after a pause if all of them fail. The kernel
command line carries mount_rootfs's contract (docs/images.md):
``cwboot.heads=<url>,<url>... cwboot.image=NAME cwboot.version=V
cwboot.mac=aa-bb-cc-dd-ee-ff cwboot.style=rwram|roram|overlay cwboot.node=NAME``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_CMDLINE_RE = re.compile(r"^[A-Za-z0-9 ,._=:/+@%~\[\]-]*$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEAD_RE = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9a-fA-F:]+\](:[0-9]{1,5})?$"
)
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
STYLES = ("rwram", "roram", "overlay")
MAX_CMDLINE = 2048


class ScriptError(ValueError):
    """A field cannot go into an iPXE script safely; the message names it."""


@dataclass(frozen=True)
class BootSpec:
    mac: str  # aa:bb:cc:dd:ee:ff
    node: str
    kernel: str  # stored file id or alias
    initramfs: str
    cmdline: str = ""
    image: str = ""
    version: str = ""
    style: str = "rwram"


def _token(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.match(value):
        raise ScriptError(
            f"{field} {value!r}: only letters, digits, '.', '_', '-' may go into a boot script"
        )
    return value


def spec_for(
    mac: str, node: Mapping[str, Any], boot_config: Mapping[str, Any], version: str
) -> BootSpec:
    """Objects -> a checked BootSpec (``version`` is the image version already resolved)."""
    if not _MAC_RE.match(mac):
        raise ScriptError(f"mac {mac!r}: expected aa:bb:cc:dd:ee:ff")
    cmdline = boot_config.get("cmdline", "") or ""
    if not isinstance(cmdline, str) or not _CMDLINE_RE.match(cmdline) or len(cmdline) > MAX_CMDLINE:
        raise ScriptError(
            "boot_config.cmdline: only letters, digits, spaces and ,._=:/+@%-~[] are allowed "
            f"(at most {MAX_CMDLINE} characters)"
        )
    style = boot_config.get("boot_style", "rwram") or "rwram"
    if style not in STYLES:
        raise ScriptError(f"boot_config.boot_style {style!r}: expected one of {', '.join(STYLES)}")
    image = boot_config.get("image", "") or ""
    return BootSpec(
        mac=mac,
        node=_token("node.name", node.get("name", "")),
        kernel=_token("boot_config.kernel", boot_config.get("kernel", "")),
        initramfs=_token("boot_config.initramfs", boot_config.get("initramfs", "")),
        cmdline=" ".join(cmdline.split()),
        image=_token("boot_config.image", image) if image else "",
        version=_token("image version", version) if image else "",
        style=style,
    )


def kernel_cmdline(spec: BootSpec, heads: Sequence[str]) -> str:
    parts = ["initrd=initramfs"]
    if spec.cmdline:
        parts.append(spec.cmdline)
    parts.append(f"cwboot.heads={','.join(heads)}")
    if spec.image:
        parts += [
            f"cwboot.image={spec.image}",
            f"cwboot.version={spec.version}",
            f"cwboot.style={spec.style}",
        ]
    parts += [f"cwboot.mac={spec.mac.replace(':', '-')}", f"cwboot.node={spec.node}"]
    return " ".join(parts)


def render(spec: BootSpec, heads: Sequence[str], *, retry_seconds: int = 5) -> str:
    """The script text. ``heads`` are base URLs like ``http://10.0.0.1:8081``, best first."""
    if not heads:
        raise ScriptError("no live head to boot from")
    for h in heads:
        if not isinstance(h, str) or not _HEAD_RE.match(h):
            raise ScriptError(f"head URL {h!r}: expected http://host[:port]")
    args = kernel_cmdline(spec, heads)
    kernels = " || ".join(
        f"kernel --name vmlinuz {h}/boot/kernel/{spec.kernel} {args}" for h in heads
    )
    initrds = " || ".join(
        f"initrd --name initramfs {h}/boot/initramfs/{spec.initramfs}" for h in heads
    )
    return "\n".join(
        [
            "#!ipxe",
            f"# cwboot: node {spec.node} ({spec.mac})",
            ":retry",
            f"{kernels} || goto wait",
            f"{initrds} || goto wait",
            "boot || goto wait",
            ":wait",
            f"echo cwboot: boot failed, retrying in {int(retry_seconds)} s",
            "imgfree",
            f"sleep {int(retry_seconds)}",
            "goto retry",
            "",
        ]
    )


def render_exit(mac: str, reason: str) -> str:
    """A script that hands the node back to its firmware (next boot device)."""
    safe = re.sub(r"[^A-Za-z0-9 ._-]", "_", reason)[:200]
    return f"#!ipxe\necho cwboot: {safe}\nexit\n"
