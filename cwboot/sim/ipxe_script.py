"""What a simulated iPXE does with a script: the kernel, initrds and command line it would boot.

A small interpreter for the subset of iPXE's language boot scripts use:
``#!ipxe``, comments, ``set``, ``${var}`` / ``${var:hexhyp}`` expansion,
``:label`` / ``goto`` (bounded), ``kernel``/``chain``/``imgexec`` with
arguments, ``initrd``/``module``, ``imgargs``, ``sleep`` (admission control
asks nodes to wait that way), ``echo``/``dhcp``/``ifconf`` (no-ops) and
``boot``. ``cmd || other`` runs ``cmd`` only (the sim's commands succeed).
URLs are resolved against the script's own URL as iPXE does.

Also: how iPXE expands settings in a DHCP boot file name
(``http://h/boot/${mac:hexhyp}``), and where a kernel command line names the
rootfs image (``rootfs_urls``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import urljoin

MAX_STEPS = 10_000
_FLAGS = {"--autofree", "-a", "--replace", "-r"}
_VAR = re.compile(r"\$\{([A-Za-z0-9_/.-]+)(?::([a-z]+))?\}")


class ScriptError(Exception):
    """The script cannot be followed (unknown label, no kernel, a loop)."""


@dataclass
class BootSpec:
    kernel: str = ""
    initrds: list[str] = field(default_factory=list)
    cmdline: str = ""
    # Seconds the script asked to sleep before booting (admission control).
    slept: float = 0.0
    # Set when the script ends by chaining to another script instead of booting.
    chain: str = ""


def expand(text: str, settings: dict[str, str]) -> str:
    """Expand ``${name}`` / ``${name:type}``; unknown settings expand to "" as in iPXE."""

    def one(match: re.Match[str]) -> str:
        name, kind = match.group(1), match.group(2)
        value = settings.get(name, settings.get(name.split("/", 1)[-1], ""))
        if kind == "hexhyp":
            return value.replace(":", "-")
        if kind == "hexraw":
            return value.replace(":", "")
        return value

    return _VAR.sub(one, text)


def node_settings(mac: str, ip: str = "") -> dict[str, str]:
    """The iPXE settings a script commonly reads (``mac``, ``net0/mac``, ``ip``...)."""
    return {"mac": mac, "net0/mac": mac, "ip": ip, "net0/ip": ip, "netX/mac": mac}


def follow(script: str, base_url: str, settings: dict[str, str]) -> BootSpec:
    """Interpret ``script`` fetched from ``base_url``; returns what it boots (or chains to)."""
    lines = [line.strip() for line in script.splitlines()]
    labels = {line[1:].strip(): i for i, line in enumerate(lines) if line.startswith(":")}
    variables = dict(settings)
    spec = BootSpec()
    pc = 0
    for _ in range(MAX_STEPS):
        if pc >= len(lines):
            break
        line = lines[pc]
        pc += 1
        if not line or line.startswith("#") or line.startswith(":"):
            continue
        line = line.split("||", 1)[0].split("&&", 1)[0].strip()
        try:
            words = shlex.split(expand(line, variables), posix=True)
        except ValueError as exc:
            raise ScriptError(f"line {pc}: {exc}") from None
        if not words:
            continue
        cmd, args = words[0], words[1:]
        # Image options precede the URL: flags, or --name x / --timeout N with a value.
        while cmd != "set" and args and args[0].startswith("-"):
            takes_value = args[0] not in _FLAGS and "=" not in args[0]
            args = args[2:] if takes_value else args[1:]
        if cmd == "set" and args:
            variables[args[0]] = " ".join(args[1:])
        elif cmd in ("kernel", "imgexec", "chain") and args:
            url = urljoin(base_url, args[0])
            if cmd == "chain" and not spec.kernel:
                spec.chain = url
                return spec
            spec.kernel = url
            spec.cmdline = " ".join(args[1:])
        elif cmd in ("initrd", "module", "imgfetch") and args:
            spec.initrds.append(urljoin(base_url, args[0]))
        elif cmd == "imgargs" and args:
            spec.cmdline = " ".join(args[1:])
        elif cmd == "sleep" and args:
            try:
                spec.slept += float(args[0])
            except ValueError:
                raise ScriptError(f"line {pc}: bad sleep {args[0]!r}") from None
        elif cmd == "goto" and args:
            if args[0] not in labels:
                raise ScriptError(f"line {pc}: unknown label {args[0]!r}")
            pc = labels[args[0]] + 1
        elif cmd == "boot":
            break
        elif cmd in ("exit", "shell", "reboot", "poweroff"):
            raise ScriptError(f"line {pc}: script ends with {cmd!r}")
    else:
        raise ScriptError(f"more than {MAX_STEPS} steps (a goto loop?)")
    if not spec.kernel:
        raise ScriptError("the script boots no kernel")
    return spec


def cmdline_params(cmdline: str) -> dict[str, str]:
    """``key=value`` tokens of a kernel command line (the last one of a key wins, as in Linux)."""
    out: dict[str, str] = {}
    for token in cmdline.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def boot_heads(cmdline: str) -> list[str]:
    """Base URLs of the live heads (``cwboot.heads=http://a:8081,http://b:8081``), best first."""
    return [h.rstrip("/") for h in cmdline_params(cmdline).get("cwboot.heads", "").split(",") if h]


def rootfs_urls(cmdline: str) -> list[str]:
    """The image version's base URL on every head, best first (mount_rootfs's contract, docs/images.md).

    ``cwboot.heads`` + ``cwboot.image`` + ``cwboot.version`` (``latest`` when
    absent) -> ``{head}/images/{image}/{version}``.
    """
    params = cmdline_params(cmdline)
    image = params.get("cwboot.image", "")
    if not image:
        return []
    version = params.get("cwboot.version", "") or "latest"
    return [f"{head}/images/{image}/{version}" for head in boot_heads(cmdline)]
