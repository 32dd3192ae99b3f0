"""Object kinds and their fields: the JSON documents cwboot keeps in its store.

Every object has the common fields ``uid`` (generated, immutable), ``name``
(unique per kind), ``description`` and ``last_modified`` (seconds since the
epoch, refreshed on every change), plus the fields of its kind listed in
``KINDS``. Field names are lower_snake_case. Validation is pure: it takes a
document and returns the normalized document or raises ``InvalidObject`` with a
message that names the field.

References between objects are by name (a node's ``boot_config`` names a
boot_config, a boot_config's ``image`` names an image).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ObjectError(Exception):
    """Base of the errors the object layer reports; ``status`` is the HTTP code."""

    status = 400


class InvalidObject(ObjectError):
    status = 400


class NotFound(ObjectError):
    status = 404


class Conflict(ObjectError):
    """Duplicate name/MAC, or a compare-on-revision that failed."""

    status = 409


_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def normalize_mac(value: Any) -> str:
    """``AA-BB-cc:dd...``/``aabbccddeeff`` -> ``aa:bb:cc:dd:ee:ff``; InvalidObject otherwise."""
    if not isinstance(value, str) or not _MAC_RE.match(value.lower()):
        raise InvalidObject(f"bad MAC address {value!r}: expected six hex octets like 52:54:00:12:34:56")
    hexdigits = re.sub(r"[:-]", "", value.lower())
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))


def new_uid() -> str:
    return uuid.uuid4().hex


# -- field checkers: each takes (field name, value) and returns the normalized value


def _str(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise InvalidObject(f"field '{name}': expected a string")
    if len(v) > 4096:
        raise InvalidObject(f"field '{name}': longer than 4096 characters")
    return v


def _object_name(name: str, v: Any) -> str:
    if not isinstance(v, str) or not _NAME_RE.match(v):
        raise InvalidObject(
            f"field '{name}': {v!r} is not a valid name (letters, digits, '.', '_', '-'; at most 63)"
        )
    return v


def _opt_ref(name: str, v: Any) -> str:
    return "" if v in ("", None) else _object_name(name, v)


def _int(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise InvalidObject(f"field '{name}': expected an integer in [{lo}, {hi}]")
        return v

    return check


def _macs(name: str, v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise InvalidObject(f"field '{name}': expected a list of MAC addresses")
    macs = [normalize_mac(m) for m in v]
    if len(set(macs)) != len(macs):
        raise InvalidObject(f"field '{name}': a MAC address is listed twice")
    return macs


def _ipv4(name: str, v: Any) -> str:
    if v in ("", None):
        return ""
    try:
        return str(ipaddress.IPv4Address(v))
    except (ipaddress.AddressValueError, ValueError):
        raise InvalidObject(f"field '{name}': {v!r} is not an IPv4 address") from None


def _network(name: str, v: Any) -> str:
    try:
        return str(ipaddress.IPv4Network(v, strict=False))
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError):
        raise InvalidObject(f"field '{name}': {v!r} is not an IPv4 network like 10.54.0.0/16") from None


def _power_uri(name: str, v: Any) -> str:
    """``ipmi://user@host:port``; a password in the URI is refused (use power_password)."""
    if v in ("", None):
        return ""
    if not isinstance(v, str) or not re.match(r"^[a-z][a-z0-9+.-]*://[^\s/]+$", v):
        raise InvalidObject(f"field '{name}': expected a URI like ipmi://user@bmc-host:623")
    userinfo = v.split("://", 1)[1].rpartition("@")[0]
    if ":" in userinfo:
        raise InvalidObject(f"field '{name}': put the password in 'power_password', not in the URI")
    return v


def _str_dict(name: str, v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise InvalidObject(f"field '{name}': expected an object of string values")
    return dict(v)


def _str_list(name: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidObject(f"field '{name}': expected a list of strings")
    return list(v)


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, v: Any) -> str:
        if v not in choices:
            raise InvalidObject(f"field '{name}': expected one of {', '.join(choices)}")
        choice: str = v
        return choice

    return check


def _json(name: str, v: Any) -> Any:
    return v  # free-form JSON (depth and size are bounded at the API edge)


@dataclass(frozen=True)
class Field:
    check: Callable[[str, Any], Any]
    default: Any = None
    # Set by the server, refused from clients.
    read_only: bool = False
    # Accepted on writes, never returned by reads (and never logged).
    secret: bool = False
    # May not change after creation.
    immutable: bool = False
    # Kept by cwboot itself from another source of truth, refused from API clients: says what
    # sets it instead (the image store's mirror). Internal writers (Objects) may set it.
    set_by: str = ""


# What changes an image's versions/latest (the image store on a head); named in refusals.
IMAGE_STORE_COMMANDS = "cwboot images import/rollback/remove"

COMMON: dict[str, Field] = {
    "uid": Field(_str, read_only=True),
    "name": Field(_object_name),
    "description": Field(_str, ""),
    "last_modified": Field(_json, read_only=True),
}

KINDS: dict[str, dict[str, Field]] = {
    "naming_pool": {
        # Node names are prefix + index: n0, n1, ...
        "prefix": Field(_object_name, "n"),
        "first_index": Field(_int(0, 10**7), 0),
        # Derived node IP = network address + ip_offset + index.
        "network": Field(_network, "10.54.0.0/16"),
        "ip_offset": Field(_int(0, 2**24), 100),
        # Next index enrolment hands out (advanced with compare-and-swap).
        "next_index": Field(_int(0, 10**7), 0),
    },
    "node": {
        "index": Field(_int(0, 10**7), immutable=False),
        "naming_pool": Field(_object_name, "default"),
        "mac": Field(_macs, []),
        "ip": Field(_ipv4, ""),
        "boot_config": Field(_opt_ref, "default"),
        "power_uri": Field(_power_uri, ""),
        "power_password": Field(_str, "", secret=True),
        "attributes": Field(_str_dict, {}),
        "groups": Field(_str_list, []),
    },
    "boot_config": {
        # Names of stored files (content-addressed, see cwboot images) or paths under the image store.
        "kernel": Field(_str, ""),
        "initramfs": Field(_str, ""),
        "cmdline": Field(_str, ""),
        "image": Field(_opt_ref, ""),
        # Pin an image version; "" follows the latest.
        "image_version": Field(_str, ""),
        "boot_style": Field(_choice("rwram", "roram", "overlay"), "rwram"),
    },
    "image": {
        # A mirror of the head's image store (its index.json is what nodes boot; see
        # ImageStore.sync_objects): [{version, manifest, raw_size, compressed_size, chunks, created}].
        "versions": Field(_json, [], set_by=IMAGE_STORE_COMMANDS),
        "latest": Field(_str, "", set_by=IMAGE_STORE_COMMANDS),
    },
    "head": {
        "addresses": Field(_str_list, []),
        "api_url": Field(_str, ""),
        "http_url": Field(_str, ""),
        "started": Field(_json, 0),
    },
    "status": {
        # Status objects are named after their node.
        "node_uid": Field(_str, ""),
        "mac": Field(_str, ""),
        "stage": Field(_str, ""),
        "head": Field(_str, ""),
        "last_seen": Field(_json, 0),
        "hardware": Field(_json, {}),
        "phases": Field(_json, {}),
    },
}


def fields_of(kind: str) -> dict[str, Field]:
    try:
        return {**COMMON, **KINDS[kind]}
    except KeyError:
        raise NotFound(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}") from None


def validate_new(kind: str, doc: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A client's document for a new object -> the full stored document (defaults filled in)."""
    if not isinstance(doc, Mapping):
        raise InvalidObject("expected a JSON object")
    spec = fields_of(kind)
    out: dict[str, Any] = {}
    for key, value in doc.items():
        f = spec.get(key)
        if f is None:
            raise InvalidObject(f"unknown field '{key}' for kind {kind}")
        if f.read_only:
            raise InvalidObject(f"field '{key}' is set by the server")
        out[key] = f.check(key, value)
    for key, f in spec.items():
        if key not in out and not f.read_only and f.default is not None:
            out[key] = _copy(f.default)
    if kind != "node" and "name" not in out:
        raise InvalidObject("field 'name' is required")
    out["uid"] = new_uid()
    out["last_modified"] = now
    return out


def validate_patch(kind: str, current: Mapping[str, Any], patch: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Apply a client's partial update to a stored document; returns the new document."""
    if not isinstance(patch, Mapping):
        raise InvalidObject("expected a JSON object")
    spec = fields_of(kind)
    out = dict(current)
    for key, value in patch.items():
        f = spec.get(key)
        if f is None:
            raise InvalidObject(f"unknown field '{key}' for kind {kind}")
        if f.read_only:
            if key in current and current[key] == value:
                continue  # echoing back a read-only field unchanged is harmless
            raise InvalidObject(f"field '{key}' is set by the server")
        if f.immutable and key in current and current[key] != value:
            raise InvalidObject(f"field '{key}' cannot change")
        out[key] = f.check(key, value)
    if out != current:
        out["last_modified"] = now
    return out


def without_mirrored_fields(
    kind: str, doc: Mapping[str, Any], current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A client's document (new object, or a patch of ``current``) minus the fields cwboot
    mirrors from elsewhere (``Field.set_by``), for the API to hand to ``Objects``.

    Writing such a field would change nothing that matters (nodes boot what the image
    store says), so any value is refused with InvalidObject naming what sets it; on a
    patch, echoing the current value back (a client that sends back what it read) is
    harmless and is dropped, so a later sync cannot be overwritten by a stale echo.
    """
    spec = fields_of(kind)
    out = dict(doc)
    for key, value in doc.items():
        f = spec.get(key)
        if f is None or not f.set_by:
            continue
        if current is not None and key in current and current[key] == value:
            del out[key]
            continue
        raise InvalidObject(
            f"field '{key}' is read-only: it mirrors the head's image store and is set by "
            f"'{f.set_by}' (changing it here would not change what nodes boot)"
        )
    return out


def redact(kind: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document as reads return it: secret fields replaced by ``<field>_set: bool``."""
    spec = KINDS.get(kind, {})
    out = {}
    for key, value in doc.items():
        f = spec.get(key)
        if f is not None and f.secret:
            out[f"{key}_set"] = bool(value)
        else:
            out[key] = value
    return out


def node_name(pool: Mapping[str, Any], index: int) -> str:
    return f"{pool['prefix']}{index}"


def node_ip(node: Mapping[str, Any], pool: Mapping[str, Any] | None) -> str:
    """The node's IP: explicit ``ip``, else pool network address + ip_offset + index ("" if unknown)."""
    if node.get("ip"):
        ip: str = node["ip"]
        return ip
    if pool is None or "index" not in node:
        return ""
    net = ipaddress.IPv4Network(pool["network"])
    addr = net.network_address + pool["ip_offset"] + node["index"]
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        return ""
    return str(addr)


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value
