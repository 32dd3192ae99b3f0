"""The DHCP boot policy: pure decisions from (request, node table, config)."""

from __future__ import annotations

import struct

import pytest

from cwboot.control.objects import validate_new
from cwboot.policy.dhcp import (
    BOOTP,
    NO_ADDRESS,
    OTHER_SERVER,
    PROXY_NOT_PXE,
    PROXY_REQUEST,
    UNKNOWN_MAC,
    BootPolicy,
    Destination,
    Enrol,
    Ignore,
    Reply,
    send_decision,
    user_class_is_ipxe,
)
from cwboot.policy.node_table import NodeTable
from cwboot.protocol.dhcp import _spec, parse_untrusted
from tests.protocol.dhcp_helpers import pxe_options, request_bytes

HEAD = "10.54.0.1"
MAC = "52:54:00:00:00:07"


def table() -> NodeTable:
    pool = validate_new(
        "naming_pool", {"name": "default", "network": "10.54.0.0/16", "ip_offset": 100}, 0.0
    )
    nodes = [
        {**validate_new("node", {"index": 7, "mac": [MAC]}, 0.0), "name": "n7"},
        {
            **validate_new(
                "node", {"index": 8, "mac": ["52:54:00:00:00:08"], "ip": "10.54.9.9"}, 0.0
            ),
            "name": "n8",
        },
        {"name": "lost", "mac": ["52:54:00:00:00:09"], "naming_pool": "missing"},
    ]
    return NodeTable(nodes, [pool])


def policy(**kw: object) -> BootPolicy:
    args: dict[str, object] = dict(
        head_address=HEAD, http_port=8081, router="10.54.0.254", dns_servers=["10.54.0.2"]
    )
    args.update(kw)
    return BootPolicy(**args)  # type: ignore[arg-type]


def ask(
    *opts: tuple[int, bytes],
    mtype: int = 1,
    mac: str = MAC,
    pol: BootPolicy | None = None,
    **kw: object,
) -> Reply | Ignore | Enrol:
    data = request_bytes(mac=mac, options=[(53, bytes((mtype,))), *opts], **kw)  # type: ignore[arg-type]
    return (pol or policy()).decide(parse_untrusted(data), table())


def reply(*opts: tuple[int, bytes], **kw: object) -> Reply:
    out = ask(*opts, **kw)
    assert isinstance(out, Reply), out
    return out


def test_known_node_gets_its_pool_address_and_network_options() -> None:
    r = reply()
    assert r.message_type == _spec.DHCPOFFER
    assert r.yiaddr == bytes((10, 54, 0, 107)) and r.siaddr == bytes((10, 54, 0, 1))
    opts = dict(r.options)
    assert opts[54] == bytes((10, 54, 0, 1))
    assert (
        opts[1] == bytes((255, 255, 0, 0))
        and opts[3] == bytes((10, 54, 0, 254))
        and opts[6] == bytes((10, 54, 0, 2))
    )
    assert struct.unpack("!I", opts[51])[0] == 3600 and struct.unpack("!I", opts[58])[0] == 1800
    assert opts[12] == b"n7"
    assert r.file == b"undionly.kpxe"


def test_explicit_ip_wins() -> None:
    assert reply(mac="52:54:00:00:00:08").yiaddr == bytes((10, 54, 9, 9))


@pytest.mark.parametrize(
    ("arch", "loader", "warnings"),
    [
        (0, b"undionly.kpxe", ()),
        (7, b"ipxe.efi", ()),
        (9, b"ipxe.efi", ()),
        (11, b"ipxe-arm64.efi", ()),
        (6, b"undionly.kpxe", ("option93_unknown_arch",)),
    ],
)
def test_loader_by_architecture(arch: int, loader: bytes, warnings: tuple[str, ...]) -> None:
    r = reply(*pxe_options(arch))
    assert r.file == loader and r.warnings == warnings
    opts = dict(r.options)
    assert opts[60] == b"PXEClient" and opts[43] == bytes((6, 1, 8, 255))
    assert opts[97] == b"\x00" + bytes(range(16))  # UUID echoed (PXE spec)


def test_snponly_is_a_config_choice() -> None:
    assert reply(*pxe_options(7), pol=policy(uefi_loader="snponly.efi")).file == b"snponly.efi"


@pytest.mark.parametrize(
    ("value", "warning"),
    [
        (b"\x00", "option93_malformed"),
        (b"\x00\x07\x00", "option93_malformed"),
        (None, "option93_missing"),
    ],
)
def test_bad_or_missing_option_93_falls_back_to_bios_with_a_warning(
    value: bytes | None, warning: str
) -> None:
    opts = [o for o in pxe_options(7) if o[0] != 93] + ([(93, value)] if value is not None else [])
    r = reply(*opts)
    assert r.file == b"undionly.kpxe" and r.warnings == (warning,)


def test_bad_option_97_is_not_echoed_and_is_counted() -> None:
    opts = [o for o in pxe_options(0) if o[0] != 97] + [(97, b"\x01abc")]
    r = reply(*opts)
    assert 97 not in dict(r.options) and r.warnings == ("option97_malformed",)


def test_bad_option_93_and_bad_option_97_are_both_counted() -> None:
    opts = [o for o in pxe_options(0) if o[0] not in (93, 97)] + [(93, b"\x00"), (97, b"\x01abc")]
    r = reply(*opts)
    assert r.file == b"undionly.kpxe" and 97 not in dict(r.options)
    assert r.warnings == ("option93_malformed", "option97_malformed")


@pytest.mark.parametrize("user_class", [b"iPXE", b"\x04iPXE", b"\x03abc\x04iPXE"])
def test_ipxe_gets_its_script_url_never_the_loader(user_class: bytes) -> None:
    r = reply(*pxe_options(7), (77, user_class))
    assert r.file == b"http://10.54.0.1:8081/boot/ipxe/52-54-00-00-00-07"
    assert dict(r.options)[175] == bytes((176, 1, 1))


def test_user_class_forms() -> None:
    assert (
        not user_class_is_ipxe(b"\x05iPXE!")
        and not user_class_is_ipxe(b"\x09iPXE")
        and not user_class_is_ipxe(None)
    )


def test_uefi_http_boot_gets_the_loader_url() -> None:
    r = reply((60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, b"\x00\x10"))
    assert r.file == b"http://10.54.0.1:8081/boot/loader/ipxe.efi"
    assert dict(r.options)[60] == b"HTTPClient"


def test_client_id_echoed_and_option_82_copied_last_when_relayed() -> None:
    agent = b"\x01\x04port\x02\x06remote" + bytes(range(200))
    r = reply((61, b"\x01" + bytes(254)), (82, agent), giaddr="10.1.0.1")
    assert r.options[-1] == (82, agent)
    assert dict(r.options)[61] == b"\x01" + bytes(254)


def test_option_82_without_giaddr_is_not_echoed() -> None:
    assert 82 not in dict(reply((82, b"\x01\x01x")).options)


def test_request_for_our_address_is_acked() -> None:
    r = reply((54, bytes((10, 54, 0, 1))), (50, bytes((10, 54, 0, 107))), mtype=3)
    assert r.message_type == _spec.DHCPACK and r.yiaddr == bytes((10, 54, 0, 107))


def test_request_for_another_server_is_silent() -> None:
    assert ask((54, bytes((10, 54, 0, 2))), mtype=3) == Ignore(OTHER_SERVER)


def test_request_for_a_wrong_address_is_naked() -> None:
    r = reply((50, bytes((10, 54, 0, 200))), mtype=3)
    assert r.message_type == _spec.DHCPNAK and r.yiaddr == bytes(4)


def test_renewal_with_ciaddr_is_acked_to_ciaddr() -> None:
    r = reply(mtype=3, ciaddr="10.54.0.107")
    assert r.message_type == _spec.DHCPACK and r.ciaddr == bytes((10, 54, 0, 107))


def test_inform_gets_options_but_no_address() -> None:
    r = reply(mtype=8, ciaddr="10.54.0.107")
    assert r.message_type == _spec.DHCPACK and r.yiaddr == bytes(4) and 51 not in dict(r.options)


def test_unknown_mac_ignored_by_default_and_enrolled_when_asked() -> None:
    assert ask(mac="52:54:00:ff:ff:ff") == Ignore(UNKNOWN_MAC)
    assert ask(mac="52:54:00:ff:ff:ff", pol=policy(unknown_mac="enrol")) == Enrol(
        "52:54:00:ff:ff:ff"
    )


def test_node_without_address_is_ignored() -> None:
    assert ask(mac="52:54:00:00:00:09") == Ignore(NO_ADDRESS)


@pytest.mark.parametrize(
    ("mtype", "reason"), [(7, "release"), (4, "release"), (2, "unexpected"), (13, "unexpected")]
)
def test_other_message_types_are_silent(mtype: int, reason: str) -> None:
    out = ask(mtype=mtype)
    assert isinstance(out, Ignore) and out.reason.startswith(reason)


def test_bootp_and_non_ethernet_and_replies_are_silent() -> None:
    assert policy().decide(parse_untrusted(request_bytes(mac=MAC)), table()) == Ignore(BOOTP)
    assert isinstance(ask(op=2), Ignore)
    assert isinstance(ask(mac="52:54:00:00:00:07:01"), Ignore)


def test_proxy_mode_gives_boot_information_only() -> None:
    pol = policy(mode="proxy")
    r = reply(*pxe_options(7), pol=pol)
    assert r.yiaddr == bytes(4) and r.file == b"ipxe.efi" and r.siaddr == bytes((10, 54, 0, 1))
    opts = dict(r.options)
    assert 51 not in opts and 1 not in opts and opts[60] == b"PXEClient" and 43 in opts
    assert ask(pol=pol) == Ignore(PROXY_NOT_PXE)
    assert ask(*pxe_options(7), mtype=3, pol=pol) == Ignore(PROXY_REQUEST)
    # iPXE in proxy mode: its script, and no 175.176 (we are the proxyDHCP it should wait for).
    r = reply(*pxe_options(7), (77, b"iPXE"), pol=pol)
    assert r.file.endswith(b"/boot/ipxe/52-54-00-00-00-07") and 175 not in dict(r.options)


def test_proxy_offer_to_ipxe_is_one_ipxe_takes_for_a_proxydhcp_offer() -> None:
    # iPXE's src/net/udp/dhcp.c: an offer is a ProxyDHCP offer only if option 60 starts with
    # "PXEClient" and it has a server id; with a boot file name ("PXE options") iPXE uses it
    # as is, without a ProxyDHCPREQUEST. Before the fix the reply had only options 54 and 12.
    r = reply(*pxe_options(0), (77, b"iPXE"), pol=policy(mode="proxy"))
    opts = dict(r.options)
    assert r.message_type == _spec.DHCPOFFER and r.yiaddr == bytes(4)
    assert opts[60][:9] == b"PXEClient" and opts[54] == bytes((10, 54, 0, 1))
    assert r.file == b"http://10.54.0.1:8081/boot/ipxe/52-54-00-00-00-07"
    # Authoritative mode is unchanged: 175.176 tells iPXE not to wait for a proxy.
    assert 60 not in dict(reply(*pxe_options(0), (77, b"iPXE")).options)


def test_ipxe_proxydhcp_request_on_4011_gets_its_script() -> None:
    # What iPXE sends when a proxy offer lacks PXE options: a REQUEST to <server id>:4011 with
    # ciaddr = its leased address and option 54 = the proxy's id; it takes an ACK (or OFFER)
    # from port 4011 whose server id matches and that carries a boot file name.
    pol = policy(mode="proxy")
    data = request_bytes(
        mac=MAC,
        ciaddr="192.168.1.50",
        options=[(53, b"\x03"), (54, bytes((10, 54, 0, 1))), *pxe_options(0), (77, b"iPXE")],
    )
    r = pol.decide(parse_untrusted(data), table(), boot_server=True)
    assert isinstance(r, Reply) and r.message_type == _spec.DHCPACK
    assert r.file == b"http://10.54.0.1:8081/boot/ipxe/52-54-00-00-00-07"
    opts = dict(r.options)
    assert opts[54] == bytes((10, 54, 0, 1)) and opts[60][:9] == b"PXEClient"
    assert r.ciaddr == bytes((192, 168, 1, 50)) and r.yiaddr == bytes(4)


def test_proxy_mode_boot_server_request_on_4011_is_acked() -> None:
    pol = policy(mode="proxy")
    data = request_bytes(mac=MAC, ciaddr="192.168.1.50", options=[(53, b"\x03"), *pxe_options(0)])
    r = pol.decide(parse_untrusted(data), table(), boot_server=True)
    assert isinstance(r, Reply) and r.message_type == _spec.DHCPACK and r.file == b"undionly.kpxe"
    assert r.ciaddr == bytes((192, 168, 1, 50)) and r.yiaddr == bytes(4)


# -- RFC 2131 4.1: where the reply goes


def _pkt(**kw: object) -> object:
    return parse_untrusted(request_bytes(mac=MAC, options=[(53, b"\x01")], **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "mtype", "expected"),
    [
        ({"giaddr": "10.1.0.1", "flags": 0x8000}, 2, Destination("relay", "10.1.0.1", 67)),
        ({"ciaddr": "10.54.0.107"}, 5, Destination("client", "10.54.0.107", 68)),
        ({"ciaddr": "10.54.0.107"}, 6, Destination("broadcast", "255.255.255.255", 68)),
        ({"flags": 0x8000}, 2, Destination("broadcast", "255.255.255.255", 68)),
        ({}, 2, Destination("hardware", "255.255.255.255", 68)),
    ],
    ids=["relay", "ciaddr", "nak", "broadcast-flag", "unicast-to-chaddr"],
)
def test_send_decision(kw: dict[str, object], mtype: int, expected: Destination) -> None:
    assert send_decision(_pkt(**kw), mtype, ("0.0.0.0", 68)) == expected  # type: ignore[arg-type]


def test_send_decision_boot_server_answers_the_source() -> None:
    pkt = _pkt(ciaddr="10.54.0.107")
    assert send_decision(pkt, 5, ("10.54.0.107", 4011), boot_server=True) == Destination(
        "source", "10.54.0.107", 4011
    )  # type: ignore[arg-type]


def test_from_config() -> None:
    from cwboot.config import DhcpConfig

    pol = BootPolicy.from_config(
        DhcpConfig(mode="proxy", uefi_loader="snponly.efi"), head_address=HEAD, http_port=80
    )
    assert (
        pol.proxy
        and pol.loaders["uefi"] == "snponly.efi"
        and pol.script_url(MAC) == "http://10.54.0.1:80/boot/ipxe/52-54-00-00-00-07"
    )


@pytest.mark.parametrize("kind", ["plain", "pxe", "ipxe", "http"])
@pytest.mark.parametrize("mode", ["authoritative", "proxy"])
def test_no_option_twice(kind: str, mode: str) -> None:
    # A repeated code would be concatenated by the client (RFC 3396): udhcpc saw hostname "n7n7".
    extra = {
        "plain": [],
        "pxe": pxe_options(0),
        "ipxe": [*pxe_options(7), (77, b"iPXE")],
        "http": [(60, b"HTTPClient:Arch:00016"), (93, b"\x00\x10")],
    }[kind]
    out = ask(*extra, (61, b"\x01abc"), pol=policy(mode=mode))
    if isinstance(out, Reply):
        codes = [code for code, _ in out.options]
        assert len(codes) == len(set(codes)), codes
    else:
        assert mode == "proxy" and kind == "plain"
