"""DHCP boot policy: which answer a booting machine gets. Pure: no I/O, no clock, no store.

``BootPolicy.decide(request, lookup)`` turns a parsed request and the in-memory
object cache into one of three decisions, which the DHCP service carries out:

- ``Reply``: the fields and options of the BOOTREPLY (the codec builds the bytes);
  ``send_decision`` says where it goes (RFC 2131 section 4.1).
- ``Ignore(reason)``: stay silent; the service counts the reason.
- ``Enrol(mac)``: unknown MAC and ``dhcp.unknown_mac = "enrol"``: the service
  creates the node off the hot path; the client's next retry finds it.

What a client is told to boot (DESIGN.md "Boot flow"):

============================  ================================================
client                        boot file
============================  ================================================
iPXE (option 77 ``iPXE``,     ``http://<head>:<http port>/boot/ipxe/<mac>``, the
raw or RFC 3004 form)         node's script; never a loader again (no loop)
UEFI HTTP boot (option 60     ``http://<head>:<http port>/boot/loader/<loader>``
``HTTPClient``)               (x86-64: ``uefi_loader``, arm64: ``arm64_loader``)
PXE ROM / anything else       TFTP loader by option 93 (``ARCH_LOADERS``);
                              missing or malformed 93: the BIOS loader + a warning
============================  ================================================

``<mac>`` in URLs is written with hyphens: ``52-54-00-12-34-56``.

Replies to iPXE carry option 175.176 = 1 so iPXE does not wait for proxyDHCP
offers (authoritative mode only: in proxy mode we *are* the proxyDHCP, and the
reply carries option 60 ``PXEClient`` instead, without which iPXE does not take
an offer that has no address for a ProxyDHCP offer).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from cwboot.protocol import dhcp as codec
from cwboot.protocol.dhcp import DhcpPacket
from cwboot.protocol.dhcp import _spec as dhcp


class NodeLookup(Protocol):
    """What the policy reads: cwboot.control.cache.ObjectCache has these methods."""

    def node_by_mac(self, mac: str) -> Mapping[str, Any] | None: ...

    def get(self, kind: str, ref: str) -> Mapping[str, Any] | None: ...

    def node_ip(self, node: Mapping[str, Any]) -> str: ...


class Reply(NamedTuple):
    """Fields and options of the BOOTREPLY (a NamedTuple: one is built per packet)."""

    message_type: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    sname: bytes
    file: bytes
    options: list[tuple[int, bytes]]
    # Things worth counting that did not stop the reply (e.g. "option93_malformed").
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class Enrol:
    mac: str


Decision = Reply | Ignore | Enrol

# Reasons for silence (the service counts each).
NOT_A_REQUEST = "not a BOOTREQUEST"
NOT_ETHERNET = "not ethernet (htype 1, hlen 6)"
BOOTP = "plain BOOTP (no option 53)"
UNEXPECTED_TYPE = "unexpected message type"
RELEASE = "release or decline (leases are deterministic: nothing to free)"
OTHER_SERVER = "request for another server"
UNKNOWN_MAC = "unknown MAC"
NO_ADDRESS = "node has no address"
PROXY_NOT_PXE = "proxy mode: not a PXE client"
PROXY_REQUEST = "proxy mode: request for the site DHCP server"

# Option 93 client system architecture (RFC 4578 2.1, IANA registry) -> loader slot.
BIOS, UEFI, ARM64 = "bios", "uefi", "arm64"
ARCH_LOADERS: dict[int, str] = {
    0: BIOS,  # Intel x86PC
    7: UEFI,  # EFI BC (x86-64 in practice)
    9: UEFI,  # EFI x86-64
    11: ARM64,  # EFI ARM64
    16: UEFI,  # x86-64 UEFI HTTP boot
    19: ARM64,  # arm64 UEFI HTTP boot
}

# Client kinds, by what it announces.
PLAIN, PXE, IPXE, HTTP = "plain", "pxe", "ipxe", "http"

_IPXE_RAW = b"iPXE"
_PXE_CLASS = b"PXEClient"
_HTTP_CLASS = b"HTTPClient"
# PXE vendor options (option 43, PXE spec 2.1 table 2-1): PXE_DISCOVERY_CONTROL = 8,
# "boot file name in this offer is what to download" (no boot-server discovery).
_PXE_VENDOR = bytes((6, 1, 8, 255))
_IPXE_NO_PXEDHCP = bytes((dhcp.IPXE_NO_PXEDHCP, 1, 1))
_ZERO = bytes(4)


def user_class_is_ipxe(value: bytes | None) -> bool:
    """Option 77 says iPXE: raw ``iPXE`` (what iPXE sends) or RFC 3004 length-prefixed classes."""
    if value is None:
        return False
    if value == _IPXE_RAW:
        return True
    i = 0
    while i < len(value):  # RFC 3004: one or more (length, class) pairs
        n = value[i]
        if n == 4 and value[i + 1 : i + 5] == _IPXE_RAW:
            return True
        i += 1 + n
    return False


def client_arch(value: bytes | None) -> tuple[int | None, str]:
    """First architecture in option 93 and a warning ("" if none): two bytes each, RFC 4578 2.1."""
    if value is None:
        return None, "option93_missing"
    if len(value) < 2 or len(value) % 2:
        return None, "option93_malformed"
    return (value[0] << 8) | value[1], ""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a reply goes: the result of ``send_decision``."""

    # "relay" (giaddr:67), "client" (ciaddr:68), "broadcast" (255.255.255.255:68),
    # "hardware" (yiaddr at chaddr: the service broadcasts, as it keeps no ARP entries),
    # "source" (back to where it came from: PXE boot-server requests on port 4011).
    kind: str
    address: str
    port: int


def send_decision(
    request: DhcpPacket, message_type: int, source: tuple[str, int], *, boot_server: bool = False
) -> Destination:
    """RFC 2131 section 4.1 "how to send the reply", as a pure decision (pixiecore's txType).

    ``boot_server``: the request came to the PXE boot-server port (4011); the
    answer goes back to its source (PXE spec 2.2.5).
    """
    if request.giaddr != _ZERO:
        return Destination("relay", _ntoa(request.giaddr), 67)
    if boot_server:
        return Destination("source", source[0], source[1])
    if message_type == dhcp.DHCPNAK:
        return Destination("broadcast", "255.255.255.255", 68)
    if request.ciaddr != _ZERO:
        return Destination("client", _ntoa(request.ciaddr), 68)
    if request.flags & dhcp.FLAG_BROADCAST:
        return Destination("broadcast", "255.255.255.255", 68)
    return Destination("hardware", "255.255.255.255", 68)


def _ntoa(packed: bytes) -> str:
    return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"


class BootPolicy:
    """The boot policy for one head; built once from config (values pre-encoded), then pure."""

    def __init__(
        self,
        *,
        mode: str = "authoritative",
        head_address: str,
        http_port: int,
        subnet_mask: str = "255.255.0.0",
        router: str = "",
        dns_servers: list[str] | tuple[str, ...] = (),
        domain: str = "",
        lease_time: int = 3600,
        unknown_mac: str = "ignore",
        bios_loader: str = "undionly.kpxe",
        uefi_loader: str = "ipxe.efi",
        arm64_loader: str = "ipxe-arm64.efi",
    ) -> None:
        if mode not in ("authoritative", "proxy"):
            raise ValueError(f"mode: expected 'authoritative' or 'proxy', got {mode!r}")
        self.proxy = mode == "proxy"
        self.enrol = unknown_mac == "enrol"
        self.head = head_address
        self.server_id = _aton(head_address)
        self.http_base = f"http://{head_address}:{http_port}"
        self.loaders = {BIOS: bios_loader, UEFI: uefi_loader, ARM64: arm64_loader}
        self.tftp_files = {slot: name.encode() for slot, name in self.loaders.items()}
        network: list[tuple[int, bytes]] = [
            (dhcp.OPT_LEASE_TIME, lease_time.to_bytes(4, "big")),
            (dhcp.OPT_RENEWAL_TIME, (lease_time // 2).to_bytes(4, "big")),
            (dhcp.OPT_REBINDING_TIME, (lease_time * 7 // 8).to_bytes(4, "big")),
            (dhcp.OPT_SUBNET_MASK, _aton(subnet_mask)),
        ]
        if router:
            network.append((dhcp.OPT_ROUTER, _aton(router)))
        if dns_servers:
            network.append((dhcp.OPT_DNS, b"".join(_aton(a) for a in dns_servers)))
        if domain:
            network.append((dhcp.OPT_DOMAIN, domain.encode()))
        self.network_options = tuple(network)
        self._templates: dict[tuple[str, bytes | None, bytes | None, bytes | None], _Template] = {}

    @classmethod
    def from_config(cls, config: Any, *, head_address: str, http_port: int) -> BootPolicy:
        """From a cwboot.config.DhcpConfig."""
        return cls(
            mode=config.mode,
            head_address=head_address,
            http_port=http_port,
            subnet_mask=config.subnet_mask,
            router=config.router,
            dns_servers=list(config.dns_servers),
            domain=config.domain,
            lease_time=config.lease_time,
            unknown_mac=config.unknown_mac,
            bios_loader=config.bios_loader,
            uefi_loader=config.uefi_loader,
            arm64_loader=config.arm64_loader,
        )

    def script_url(self, mac: str) -> str:
        """The node's iPXE script, served by the HTTP boot service."""
        return f"{self.http_base}/boot/ipxe/{mac.replace(':', '-')}"

    def loader_url(self, slot: str) -> str:
        """An EFI loader over HTTP, for UEFI HTTP boot."""
        return f"{self.http_base}/boot/loader/{self.loaders[slot]}"

    def decide(
        self, request: DhcpPacket, lookup: NodeLookup, *, boot_server: bool = False
    ) -> Decision:
        """The answer to ``request``; ``boot_server`` when it came to the PXE port 4011."""
        if request.op != dhcp.BOOTREQUEST:
            return _IGNORE[NOT_A_REQUEST]
        if request.htype != 1 or request.hlen != 6:
            return _IGNORE[NOT_ETHERNET]
        mtype = request.message_type
        options = request.options
        if mtype == dhcp.DHCPDISCOVER:
            reply_type = dhcp.DHCPOFFER
        elif mtype == dhcp.DHCPREQUEST or mtype == dhcp.DHCPINFORM:
            reply_type = dhcp.DHCPACK
            server_id = options.get(dhcp.OPT_SERVER_ID)
            if server_id is not None and server_id != self.server_id:
                return _IGNORE[OTHER_SERVER]
            if self.proxy and not boot_server and mtype == dhcp.DHCPREQUEST:
                return _IGNORE[PROXY_REQUEST]
        elif mtype == 0:
            return _IGNORE[BOOTP]
        elif mtype == dhcp.DHCPRELEASE or mtype == dhcp.DHCPDECLINE:
            return _IGNORE[RELEASE]
        else:
            return _IGNORE[UNEXPECTED_TYPE]

        mac = request.mac
        node = lookup.node_by_mac(mac)
        if node is None:
            if self.proxy and classify(options)[0] == PLAIN:
                return _IGNORE[PROXY_NOT_PXE]
            return Enrol(mac) if self.enrol else _IGNORE[UNKNOWN_MAC]
        # The per-node part of the reply is memoized by MAC and the raw options that pick
        # the boot file (77, 60, 93), while the cache returns the same node and naming-pool
        # documents (it replaces a document on every change); only then is the client
        # classified again and the IP derived.
        pool = lookup.get("naming_pool", node.get("naming_pool") or "default")
        key = (mac, options.get(dhcp.OPT_USER_CLASS), options.get(dhcp.OPT_VENDOR_CLASS),
               options.get(dhcp.OPT_CLIENT_ARCH))  # fmt: skip
        template = self._templates.get(key)
        if template is None or template.node is not node or template.pool is not pool:
            kind, arch, warning = classify(options)
            if self.proxy and kind == PLAIN:
                return _IGNORE[PROXY_NOT_PXE]
            ip = "" if self.proxy else lookup.node_ip(node)
            if not ip and not self.proxy:
                return _IGNORE[NO_ADDRESS]
            template = self._template(key, node, pool, ip, kind, arch, warning)
        kind = template.kind
        warnings = template.warnings

        yiaddr = template.yiaddr
        ciaddr = _ZERO
        if self.proxy:
            reply_options = [*template.boot_options]
            if boot_server:
                ciaddr = request.ciaddr
        elif mtype == dhcp.DHCPINFORM:
            # RFC 2131 4.3.5: no address and no lease; the answer goes to ciaddr.
            ciaddr = request.ciaddr
            yiaddr = _ZERO
            reply_options = [*template.boot_options]
        else:
            if mtype == dhcp.DHCPREQUEST:
                requested = options.get(dhcp.OPT_REQUESTED_IP) or request.ciaddr
                if requested != _ZERO and requested != yiaddr:
                    return self._nak(request)  # RFC 2131 4.3.2: not this client's address
                ciaddr = request.ciaddr
            reply_options = [*template.lease_options]
        if kind == PXE or kind == HTTP:
            uuid = options.get(dhcp.OPT_CLIENT_UUID)
            if uuid is not None:
                # PXE spec 2.1: echo the client UUID; RFC 4578 2.3: type 0 + 16 bytes.
                if len(uuid) == 17 and uuid[0] == 0:
                    reply_options.append((dhcp.OPT_CLIENT_UUID, uuid))
                else:
                    warnings = (*warnings, "option97_malformed")
        client_id = options.get(dhcp.OPT_CLIENT_ID)
        if client_id is not None:
            reply_options.append((dhcp.OPT_CLIENT_ID, client_id))  # RFC 6842
        if request.giaddr != _ZERO:
            relay = options.get(dhcp.OPT_RELAY_AGENT)
            if relay is not None:
                reply_options.append(
                    (dhcp.OPT_RELAY_AGENT, relay)
                )  # RFC 3046 2.2: byte-exact, last
        return Reply(
            reply_type,
            ciaddr,
            yiaddr,
            self.server_id,
            b"",
            template.file,
            reply_options,
            warnings,
        )

    def _template(
        self,
        key: tuple[str, bytes | None, bytes | None, bytes | None],
        node: Mapping[str, Any],
        pool: Mapping[str, Any] | None,
        ip: str,
        kind: str,
        arch: int | None,
        warning: str,
    ) -> _Template:
        """Build and remember the per-node part of a reply (file, options, address)."""
        boot: list[tuple[int, bytes]] = [(dhcp.OPT_SERVER_ID, self.server_id)]
        if kind == IPXE:
            file = self.script_url(key[0]).encode()
            if self.proxy:
                # iPXE (src/net/udp/dhcp.c) takes an offer without an address as a
                # ProxyDHCP offer only if option 60 starts with "PXEClient"; with a boot
                # file name in it, it uses the offer as is (no ProxyDHCPREQUEST to 4011).
                boot.append((dhcp.OPT_VENDOR_CLASS, _PXE_CLASS))
            else:
                boot.append((dhcp.OPT_IPXE, _IPXE_NO_PXEDHCP))
        else:
            slot = ARCH_LOADERS.get(arch, BIOS) if arch is not None else BIOS
            if kind == HTTP:
                file = self.loader_url(slot).encode()
                boot.append((dhcp.OPT_VENDOR_CLASS, _HTTP_CLASS))
            else:
                file = self.tftp_files[slot]
                if kind == PXE:
                    boot.append((dhcp.OPT_VENDOR_CLASS, _PXE_CLASS))
                    boot.append((dhcp.OPT_VENDOR_SPECIFIC, _PXE_VENDOR))
        name = node.get("name")
        if name:
            boot.append((dhcp.OPT_HOSTNAME, name.encode()))
        lease = [boot[0], *self.network_options, *boot[1:]]
        yiaddr = _aton(ip) if ip else _ZERO
        warnings = (warning,) if warning else ()
        template = _Template(node, pool, kind, warnings, yiaddr, file, tuple(boot), tuple(lease))
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()  # bounded: removed nodes do not pile up
        self._templates[key] = template
        return template

    def _nak(self, request: DhcpPacket) -> Reply:
        options = [(dhcp.OPT_SERVER_ID, self.server_id)]
        client_id = request.options.get(dhcp.OPT_CLIENT_ID)
        if client_id is not None:
            options.append((dhcp.OPT_CLIENT_ID, client_id))
        relay = request.options.get(dhcp.OPT_RELAY_AGENT)
        if relay is not None and request.giaddr != _ZERO:
            options.append((dhcp.OPT_RELAY_AGENT, relay))
        return Reply(dhcp.DHCPNAK, _ZERO, _ZERO, _ZERO, b"", b"", options)


class _Template(NamedTuple):
    node: Mapping[str, Any]
    pool: Mapping[str, Any] | None
    kind: str
    warnings: tuple[str, ...]
    yiaddr: bytes
    file: bytes
    # Server id + boot options (proxy mode, INFORM); the same plus lease and network options.
    boot_options: tuple[tuple[int, bytes], ...]
    lease_options: tuple[tuple[int, bytes], ...]


_MAX_TEMPLATES = 1 << 17
_IGNORE = {
    reason: Ignore(reason)
    for reason in (NOT_A_REQUEST, NOT_ETHERNET, BOOTP, UNEXPECTED_TYPE, RELEASE, OTHER_SERVER, UNKNOWN_MAC,
                   NO_ADDRESS, PROXY_NOT_PXE, PROXY_REQUEST)
}  # fmt: skip


class FastPath:
    """The policy's answers compiled into reply templates, for the codec's one-call respond path.

    ``respond(data)`` (the codec backend's ``FastResponder.respond``: Cython or
    pure Python, rules in cwboot.protocol.dhcp._spec) answers the common
    requests -- a known node's DISCOVER or REQUEST, relayed or not -- by
    selecting a template and copying the request's xid, flags, ciaddr, giaddr,
    chaddr and the options that are echoed (97, 61, 82) into it; it returns
    None for anything else, which then takes the full path (parse_untrusted ->
    ``decide`` -> build_reply -> ``send_decision``).

    It decides nothing itself. A template is what ``decide`` answered: after the
    full path replied, ``learn(request)`` takes the policy's own memo entry
    (``_Template``: node, pool, boot file, options, address) and has the
    ordinary ``build_reply`` build the OFFER from it with every per-request
    field zero. Its key is the memo's key (MAC and the raw 77/60/93). It holds
    while the lookup returns the same node and naming-pool documents (as the
    memo): checked again whenever the lookup's ``revision`` changed since the
    last check (every time for a lookup without one). Not compiled: proxy mode,
    replies with a warning (the full path counts them), NAKs, INFORM.

    ``warm(pairs)`` compiles templates before a node's first request: for each
    (MAC, client class) it runs ``decide`` on a DISCOVER carrying exactly that
    class's raw options 77, 60 and 93 (the memo key: nothing else in a request
    changes the template) and ``learn``s it, so the template is the one the
    first real request would have compiled. The classes: ``WARM_CLASSES``
    (no 77/60/93: perfdhcp, dhclient, udhcpc without a vendor class), then the
    classes of the requests this fast path has compiled templates for
    (``classes``: a PXE ROM's or an iPXE build's exact strings, learned from
    the first node of each; at most ``MAX_LEARNED_CLASSES``). Warming stops at
    half the responder's ``max_entries`` so that it never makes the table clear
    itself.
    """

    def __init__(
        self, policy: BootPolicy, lookup: NodeLookup, *, backend: Any = None
    ) -> None:
        if policy.proxy:
            raise ValueError("the fast path serves authoritative mode only")
        self.policy = policy
        self.lookup = lookup
        self._has_revision = hasattr(lookup, "revision")
        impl = backend if backend is not None else codec
        self._build = impl.build_reply
        self.responder: codec.FastResponder = impl.FastResponder(
            policy.server_id, self._check, lookup if self._has_revision else None
        )
        self.respond: Callable[[bytes], tuple[bytes, tuple[str, int]] | None] = (
            self.responder.respond
        )
        # Client classes to warm (dict as an ordered set); ``classes_version`` moves when one is added.
        self.classes: dict[ClientClass, None] = dict.fromkeys(WARM_CLASSES)
        self.classes_version = 0

    def _check(self, owner: Any) -> bool:
        mac: str = owner[0]
        node: Mapping[str, Any] = owner[1]
        pool: object = owner[2]
        lookup = self.lookup
        if lookup.node_by_mac(mac) is not node:
            return False
        return lookup.get("naming_pool", node.get("naming_pool") or "default") is pool

    def learn(self, request: DhcpPacket) -> bool:
        """Compile the template that answers ``request`` (after ``decide`` replied to it)."""
        if (request.op != dhcp.BOOTREQUEST or request.htype != 1 or request.hlen != 6
                or request.message_type not in (dhcp.DHCPDISCOVER, dhcp.DHCPREQUEST)):  # fmt: skip
            return False
        options = request.options
        user, vendor, arch = (options.get(dhcp.OPT_USER_CLASS), options.get(dhcp.OPT_VENDOR_CLASS),
                              options.get(dhcp.OPT_CLIENT_ARCH))  # fmt: skip
        key = dhcp.fast_key(request.chaddr[:6], user, vendor, arch)
        if key is None or key in self.responder.entries:
            return False
        lookup = self.lookup
        revision = getattr(lookup, "revision", None) if self._has_revision else None
        mac = request.mac
        node = lookup.node_by_mac(mac)
        if node is None:
            return False
        pool = lookup.get("naming_pool", node.get("naming_pool") or "default")
        template = self.policy._templates.get((mac, user, vendor, arch))
        if (template is None or template.node is not node or template.pool is not pool
                or template.warnings):  # fmt: skip
            return False
        offer = self._build(_BLANK_REQUEST, dhcp.DHCPOFFER, _ZERO, template.yiaddr, self.policy.server_id,
                            b"", template.file, template.lease_options)  # fmt: skip
        end = len(offer.rstrip(b"\0")) - 1  # END is the last byte build_reply writes; PAD follows
        self.responder.add(key, offer, end, template.yiaddr, template.kind in (PXE, HTTP),
                           (mac, node, pool), revision)  # fmt: skip
        cls = (user, vendor, arch)
        if cls not in self.classes and len(self.classes) < len(WARM_CLASSES) + MAX_LEARNED_CLASSES:
            self.classes[cls] = None
            self.classes_version += 1
        return True

    def warm(self, pairs: Iterable[tuple[str, ClientClass]]) -> int:
        """Compile the templates of (MAC, client class) pairs not compiled yet; how many were.

        Stops early (returns) once the responder holds half its ``max_entries``.
        """
        entries = self.responder.entries
        budget = self.responder.max_entries // 2
        decide = self.policy.decide
        lookup = self.lookup
        compiled = 0
        for mac, (user, vendor, arch) in pairs:
            if len(entries) >= budget:
                break
            try:
                hwaddr = bytes.fromhex(mac.replace(":", ""))
            except ValueError:
                continue
            if len(hwaddr) != 6:
                continue
            key = dhcp.fast_key(hwaddr, user, vendor, arch)
            if key is None or key in entries:
                continue
            options = {dhcp.OPT_MESSAGE_TYPE: bytes((dhcp.DHCPDISCOVER,))}
            for code, value in ((dhcp.OPT_USER_CLASS, user), (dhcp.OPT_VENDOR_CLASS, vendor),
                                (dhcp.OPT_CLIENT_ARCH, arch)):  # fmt: skip
                if value is not None:
                    options[code] = value
            request = _BLANK_REQUEST._replace(
                chaddr=hwaddr + bytes(dhcp.CHADDR_LEN - 6), options=options, mac=mac
            )
            if type(decide(request, lookup)) is Reply and self.learn(request):
                compiled += 1
        return compiled


# A client class: the raw options 77 (user class), 60 (vendor class), 93 (architecture) a
# client sends, None when absent; with the MAC it is the template key.
ClientClass = tuple[bytes | None, bytes | None, bytes | None]
# Warmed for every node before anything is learned: clients without 77/60/93 (perfdhcp,
# dhclient). PXE ROMs and iPXE builds send their own strings (see the golden captures:
# four different option 60 values from two QEMU firmwares alone), so those are learned.
WARM_CLASSES: tuple[ClientClass, ...] = ((None, None, None),)
MAX_LEARNED_CLASSES = 8


# What FastPath.learn builds a template for: every field the fast path copies from the
# request (xid, flags, ciaddr, giaddr, chaddr) zero.
_BLANK_REQUEST = DhcpPacket(dhcp.BOOTREQUEST, 1, 6, 0, 0, 0, 0, _ZERO, _ZERO, _ZERO, _ZERO,
                            bytes(dhcp.CHADDR_LEN), b"", b"", {}, dhcp.DHCPDISCOVER, "")  # fmt: skip


def classify(options: dict[int, bytes]) -> tuple[str, int | None, str]:
    """(client kind, option-93 architecture, warning) from options 60/77/93."""
    if user_class_is_ipxe(options.get(dhcp.OPT_USER_CLASS)):
        return IPXE, None, ""
    vendor = options.get(dhcp.OPT_VENDOR_CLASS)
    if vendor is None:
        kind = PLAIN
    elif vendor.startswith(_PXE_CLASS):
        kind = PXE
    elif vendor.startswith(_HTTP_CLASS):
        kind = HTTP
    else:
        kind = PLAIN
    arch, warning = client_arch(options.get(dhcp.OPT_CLIENT_ARCH))
    if kind == PLAIN and warning == "option93_missing":
        warning = ""  # ordinary DHCP clients do not send 93
    elif arch is not None and arch not in ARCH_LOADERS:
        warning = "option93_unknown_arch"
    return kind, arch, warning


def _aton(address: str) -> bytes:
    """Dotted quad -> 4 bytes; ValueError for anything ipaddress.IPv4Address refuses.

    The common form (four ASCII decimal octets, no leading zeros, <= 255) is
    converted here, several times faster than ipaddress; anything else goes to
    ipaddress, which accepts or refuses it.
    """
    parts = address.split(".")
    if len(parts) == 4:
        octets = []
        for part in parts:
            if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()) or (
                part[0] == "0" and len(part) > 1
            ):
                break
            value = int(part)
            if value > 255:
                break
            octets.append(value)
        else:
            return bytes(octets)
    return ipaddress.IPv4Address(address).packed
