"""cwboot's configuration: one TOML file, typed, unknown keys rejected by name.

The file (default ``/etc/cwboot/cwboot.toml``, ``--config`` or ``CWBOOT_CONFIG``
to override) has one table per section below. Every setting can also be
overridden with ``--set section.key=value`` (the value is parsed as TOML, so
``--set dhcp.port=6767`` and ``--set 'api.admin_tokens=["t"]'`` both work);
tests use that to pick ports, addresses and the state directory.

A misspelt key is an error that names it (``unknown key 'dhcp.prot'``), never
silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/cwboot/cwboot.toml")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


@dataclass
class HeadConfig:
    # Unique name of this head node; defaults to the host name.
    name: str = ""
    # Where the embedded store, images and run-time files live.
    state_dir: str = "/var/lib/cwboot"
    # Address compute nodes use to reach this head (DHCP next-server, URLs).
    advertise_address: str = "127.0.0.1"


@dataclass
class StoreConfig:
    # "embedded" (SQLite file, single head) or "etcd" (HA).
    backend: str = "embedded"
    # SQLite file for the embedded backend; "" means <state_dir>/store.sqlite3.
    path: str = ""
    etcd_endpoints: list[str] = field(default_factory=lambda: ["127.0.0.1:2379"])
    # Seconds a head's registration (and a node status) outlives its last renewal.
    lease_ttl: int = 15


@dataclass
class ApiConfig:
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = 8080
    # Tokens that may write (and read); tokens that may only read.
    admin_tokens: list[str] = field(default_factory=list)
    read_tokens: list[str] = field(default_factory=list)
    # A file holding one admin token (created with a random token if missing).
    admin_token_file: str = ""
    max_body_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 32


@dataclass
class DhcpConfig:
    enabled: bool = True
    listen: str = "0.0.0.0"
    port: int = 67
    # Bind to this interface (SO_BINDTODEVICE) when set.
    interface: str = ""
    # "authoritative" hands out addresses; "proxy" answers PXE clients only (site DHCP keeps addresses).
    mode: str = "authoritative"
    subnet_mask: str = "255.255.0.0"
    router: str = ""
    dns_servers: list[str] = field(default_factory=list)
    domain: str = ""
    lease_time: int = 3600
    # What to do with MACs not in the store: "ignore" or "enrol".
    unknown_mac: str = "ignore"
    # Naming pool that enrolled nodes join.
    enrol_pool: str = "default"
    # Enrolments admitted per second (token bucket) and at once: any MAC on the wire,
    # spoofed ones too, could otherwise create store objects without bound.
    enrol_rate: float = 10.0
    enrol_burst: int = 20
    rcvbuf_bytes: int = 8 * 1024 * 1024
    # Boot loaders by client architecture (option 93): BIOS, x86-64 UEFI ("ipxe.efi" or
    # "snponly.efi"), arm64 UEFI. UEFI HTTP boot gets http://<head>/boot/loader/<name>.
    bios_loader: str = "undionly.kpxe"
    uefi_loader: str = "ipxe.efi"
    arm64_loader: str = "ipxe-arm64.efi"
    # proxyDHCP mode also answers PXE boot-server requests on this port (PXE spec 2.2.5).
    proxy_port: int = 4011


@dataclass
class TftpConfig:
    enabled: bool = True
    listen: str = "0.0.0.0"
    port: int = 69
    # Folder served; "" means <state_dir>/tftp with Debian's iPXE loaders found automatically.
    root: str = ""
    max_transfers: int = 2000
    # RRQs beyond max_transfers wait (first come, first served) for a slot; with
    # max_queued already waiting, an RRQ is dropped (the client retries it).
    max_queued: int = 4096
    # A waiting RRQ whose client sent nothing for this long (no retransmission: it
    # retried from another port or gave up) is forgotten. Firmware retransmits an
    # unanswered RRQ every few seconds.
    queue_timeout: float = 10.0
    # Running and waiting transfers per client address.
    max_transfers_per_peer: int = 4
    timeout: float = 1.0
    retries: int = 5
    max_blksize: int = 1468
    # RFC 7440 windows larger than this are answered with this value.
    max_windowsize: int = 64
    # Serve TFTP from a child process with its own event loop: lockstep transfers are
    # bound by round-trip latency, which suffers when the head's loop is busy streaming
    # rootfs chunks in a storm. (Per-transfer statistics then stay in that process.)
    own_process: bool = True


@dataclass
class HttpConfig:
    enabled: bool = True
    listen: str = "0.0.0.0"
    port: int = 8081
    # Admission control: concurrent bulk answers (rootfs streams and chunks, kernels,
    # initramfs files). A request beyond it queues (first come, first served) for up to
    # max_wait seconds; past that, or with max_queued requests already waiting, it gets
    # 503 + Retry-After. 128: with 256, and kernels/initramfs outside the budget, a
    # 1,000-node storm overflowed the nodes' receive queues (docs/storm.md, 2026-12-01).
    max_streams: int = 128
    max_wait: float = 10.0
    max_queued: int = 8192
    # Worker processes that send bulk bodies (kernel, initramfs, chunks, streams) with
    # sendfile, so the kernel's copy work runs on other cores while the engine's loop
    # parses requests; 0 = send them from the engine's own loop. Default 2: a 1,000-node
    # storm took 17.0 s (median) with 2 against 20.7 s with 0 on a 2-core head (docs/storm.md).
    sendfile_workers: int = 2


@dataclass
class ImagesConfig:
    # "" means <state_dir>/images.
    store_dir: str = ""
    chunk_size: int = 1024 * 1024
    zstd_level: int = 3
    # 0 = one compression thread per core.
    threads: int = 0


@dataclass
class PowerConfig:
    # Run the IPMI worker processes and the /api/v1/power endpoints.
    enabled: bool = True
    # Threads per IPMI worker process (processes: enough for max_concurrent).
    workers: int = 32
    # BMC operations at once on this head (always at most one per BMC).
    # 128: a 1,000-node power-on during its own boot storm finished in 2.9 s (64: 10.8 s), docs/power.md.
    max_concurrent: int = 128
    # Seconds per node from the start of its operation; more attempts after a retryable failure.
    timeout: float = 5.0
    retries: int = 2
    # Power-on waves: nodes started per second (0 = no shaping).
    wave_rate: float = 0.0


@dataclass
class Config:
    head: HeadConfig = field(default_factory=HeadConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)
    tftp: TftpConfig = field(default_factory=TftpConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    power: PowerConfig = field(default_factory=PowerConfig)

    # Paths derived from state_dir when left empty.
    @property
    def state_dir(self) -> Path:
        return Path(self.head.state_dir)

    @property
    def store_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.state_dir / "store.sqlite3"

    @property
    def images_dir(self) -> Path:
        return Path(self.images.store_dir) if self.images.store_dir else self.state_dir / "images"

    @property
    def tftp_root(self) -> Path:
        return Path(self.tftp.root) if self.tftp.root else self.state_dir / "tftp"


def _check_type(where: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_check_type(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{where}: unsupported type")  # no optional settings: defaults instead
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got a boolean")
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _apply(section_obj: Any, section: str, values: dict[str, Any]) -> None:
    hints = typing.get_type_hints(type(section_obj))
    names = {f.name for f in dataclasses.fields(section_obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key '{section}.{key}'")
        setattr(section_obj, key, _check_type(f"{section}.{key}", value, hints[key]))


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from parsed TOML, rejecting unknown sections and keys."""
    cfg = Config()
    for section, values in data.items():
        if section not in {f.name for f in dataclasses.fields(cfg)}:
            raise ConfigError(f"unknown section '{section}'")
        if not isinstance(values, dict):
            raise ConfigError(f"'{section}' must be a table")
        _apply(getattr(cfg, section), section, values)
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    if cfg.store.backend not in ("embedded", "etcd"):
        raise ConfigError(f"store.backend: expected 'embedded' or 'etcd', got {cfg.store.backend!r}")
    if cfg.dhcp.mode not in ("authoritative", "proxy"):
        raise ConfigError(f"dhcp.mode: expected 'authoritative' or 'proxy', got {cfg.dhcp.mode!r}")
    if cfg.dhcp.unknown_mac not in ("ignore", "enrol"):
        raise ConfigError(f"dhcp.unknown_mac: expected 'ignore' or 'enrol', got {cfg.dhcp.unknown_mac!r}")
    if not cfg.dhcp.enrol_rate > 0:
        raise ConfigError(f"dhcp.enrol_rate: expected > 0 enrolments per second, got {cfg.dhcp.enrol_rate!r}")
    if cfg.dhcp.enrol_burst < 1:
        raise ConfigError(f"dhcp.enrol_burst: expected >= 1, got {cfg.dhcp.enrol_burst!r}")
    for section in ("api", "dhcp", "tftp", "http"):
        port = getattr(cfg, section).port
        if not 0 <= port <= 65535:
            raise ConfigError(f"{section}.port: {port} is not a port number")
    pw = cfg.power
    for key, valid in (
        ("workers", pw.workers >= 1),
        ("max_concurrent", pw.max_concurrent >= 1),
        ("timeout", pw.timeout > 0),
        ("retries", pw.retries >= 0),
        ("wave_rate", pw.wave_rate >= 0),
    ):
        if not valid:
            raise ConfigError(f"power.{key}: {getattr(pw, key)!r} is out of range")


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse one ``section.key=value`` override; the value is TOML (bare words are strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def tftp_from_settings(listen: str, port: int, settings: Sequence[str]) -> TftpConfig:
    """A TftpConfig from ``KEY=VALUE`` words alone (no file), typed and validated like the
    file's ``[tftp]`` table: what a TFTP process started on its own is given."""
    values: dict[str, Any] = {"listen": listen, "port": port}
    for text in settings:
        _, key, value = parse_override(f"tftp.{text}")
        values[key] = value
    return from_dict({"tftp": values}).tftp


def load(path: str | os.PathLike[str] | None = None, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Load the config file (if it exists) and apply ``section.key=value`` overrides.

    An explicitly named file that does not exist is an error; the default path
    may be absent (built-in defaults apply).
    """
    explicit = path is not None or "CWBOOT_CONFIG" in os.environ
    p = Path(path or os.environ.get("CWBOOT_CONFIG") or DEFAULT_PATH)
    data: dict[str, Any] = {}
    if p.exists():
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    elif explicit:
        raise ConfigError(f"config file {p} does not exist")
    for text in overrides:
        section, key, value = parse_override(text)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"'{section}' must be a table")
        data[section][key] = value
    return from_dict(data)
