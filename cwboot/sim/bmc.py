"""A BMC simulator speaking real RMCP+ / IPMI 2.0 on loopback UDP.

Why our own and not pyghmi's ``Bmc`` or OpenIPMI's ``ipmi_sim``:

- pyghmi's ``Bmc`` answers every Open Session Request with cipher suite 3
  whatever the client asked for; pyghmi's own client asks for suite 17
  (SHA-256), gets a SHA-1 RAKP2 and fails (pyghmi 1.6.19: "pack expected 32
  items for packing (got 20)"; ``ipmitool -C 3`` works). Its server also runs on pyghmi's
  shared select() loop, which has the concurrency flaws cwboot.control.power
  works around, and select() cannot watch 1,000 sockets.
- ``ipmi_sim`` is one process per BMC, calls its chassis_control program by
  fork+exec for every power query and has no knob for a silent or slow BMC;
  1,000 of them on a two-core machine is a benchmark of ipmi_sim.

So ``SimulatedBmc`` is a sans-IO state machine (datagram in, datagrams out,
time passed in) and ``serve_bmcs`` runs any number of them in one trio task
tree, one UDP socket each. It negotiates cipher suites 3 and 17 exactly as
asked (so pyghmi gets SHA-256 and ``ipmitool -I lanplus -C 3`` works),
answers anything else - suite 0 included - with "no cipher suite match", and
limits sessions per BMC like a real one (63). It counts sessions so a
benchmark can check the peak number open at once per BMC.

Run standalone: ``python -m cwboot.sim.bmc --count 1000`` prints one JSON line
``{"host": ..., "ports": [...]}``, then a JSON line of statistics (sessions,
peak sessions per BMC, powered on) for every line it reads on stdin, and
exits at EOF.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import socket
import struct
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from cwboot.sim import rmcpplus as wire
from cwboot.sim.rmcpplus import BadPacket

log = logging.getLogger(__name__)

# Chassis control actions (22.3) by the number in the request.
CHASSIS_ACTIONS = {0: "off", 1: "on", 2: "cycle", 3: "reset", 5: "soft"}
# Completion codes (table 5-2).
CC_OK = 0x00
CC_INVALID_COMMAND = 0xC1
CC_REQUEST_DATA_LENGTH = 0xC7
CC_PARAMETER_OUT_OF_RANGE = 0xC9
CC_NOT_IN_PRESENT_STATE = 0xD5

MAX_SESSIONS = 63
SESSION_IDLE_TIMEOUT = 60.0
ADMIN = 4

# Called with (bmc, action) after a chassis control request changed state: the
# storm harness starts or stops a simulated node from it.
PowerHook = Callable[["SimulatedBmc", str], None]


@dataclass
class BmcOptions:
    """Per-BMC behaviour for tests: credentials, and silent / slow / restricted variants."""

    user: str = "admin"
    password: str = "password"
    # Drop every datagram (a dead or unreachable BMC).
    silent: bool = False
    # Seconds to hold each reply (a slow BMC).
    delay: float = 0.0
    # Cipher suites offered, in preference order.
    cipher_suites: tuple[int, ...] = (17, 3)
    # Answer this many Open Session Requests with "insufficient resources" (a busy BMC).
    refuse_sessions: int = 0


@dataclass
class _Session:
    managed_id: int
    console_id: int
    suite: wire.CipherSuite
    opened: float
    last_seen: float
    console_random: bytes = b""
    bmc_random: bytes = b""
    role: int = 0
    user: bytes = b""
    keys: wire.SessionKeys | None = None
    sequence: int = 0
    privilege: int = ADMIN
    # The last request (rqSeq, netFn, cmd, data) and our response message to it.
    last_request: tuple[int, int, int, bytes] | None = None
    last_response: bytes = b""


@dataclass
class BmcStats:
    sessions_opened: int = 0
    sessions_closed: int = 0
    sessions_expired: int = 0
    # Established sessions open right now and the most ever open at once.
    active: int = 0
    peak_active: int = 0
    commands: int = 0
    # Retransmitted requests answered from the previous response, not run again.
    duplicates: int = 0
    auth_failures: int = 0
    drops: dict[str, int] = field(default_factory=dict)


class SimulatedBmc:
    """One BMC: RMCP+ session handshake (RAKP, 13.20-13.24), chassis and boot-option commands."""

    def __init__(
        self, name: str, options: BmcOptions | None = None, hook: PowerHook | None = None
    ) -> None:
        self.name = name
        self.options = options or BmcOptions()
        self.hook = hook
        self.guid = uuid.uuid4().bytes
        self.power_on = False
        # Boot option parameters (22.13) by selector; 5 = boot flags.
        self.boot_params: dict[int, bytes] = {5: bytes(5)}
        # Chassis actions received, in order ("on", "off", "cycle", ...).
        self.history: list[str] = []
        # The device the last power-on/cycle/reset booted from ("" before any boot).
        self.last_boot_device = ""
        self.stats = BmcStats()
        self._sessions: dict[int, _Session] = {}
        self._refused = 0

    # -- state seen by tests

    @property
    def boot_device(self) -> str:
        """ "pxe", "disk", "none" from the boot flags parameter (22.13 param 5)."""
        flags = self.boot_params.get(5, bytes(5))
        if not flags[0] & 0x80:
            return "none"
        return {0x04: "pxe", 0x08: "disk"}.get(flags[1] & 0x3C, f"0x{flags[1] & 0x3C:02x}")

    @property
    def boot_persistent(self) -> bool:
        return bool(self.boot_params.get(5, bytes(5))[0] & 0x40)

    def _drop(self, reason: str) -> list[bytes]:
        self.stats.drops[reason] = self.stats.drops.get(reason, 0) + 1
        return []

    # -- datagrams

    def datagram_received_untrusted(self, data: bytes, now: float) -> list[bytes]:
        """Handle one datagram; returns the datagrams to send back (maybe none). Never raises."""
        if self.options.silent:
            return self._drop("silent")
        self._expire(now)
        try:
            dgram = wire.parse_header_untrusted(data)
            if dgram.authtype == wire.AUTHTYPE_NONE:
                return self._sessionless_v15(dgram)
            ptype = dgram.payload_type & 0x3F
            if dgram.session_id == 0:
                if ptype == wire.PAYLOAD_OPEN_SESSION_REQUEST:
                    return self._open_session_untrusted(dgram.payload, now)
                if ptype == wire.PAYLOAD_RAKP1:
                    return self._rakp1_untrusted(dgram.payload, now)
                if ptype == wire.PAYLOAD_RAKP3:
                    return self._rakp3_untrusted(dgram.payload, now)
                if (
                    ptype == wire.PAYLOAD_IPMI
                    and not dgram.payload_type & wire.PAYLOAD_AUTHENTICATED
                ):
                    return self._sessionless_v20(dgram)
                return self._drop("unexpected sessionless payload")
            if ptype != wire.PAYLOAD_IPMI:
                return self._drop("unsupported payload type")
            return self._session_packet_untrusted(data, dgram, now)
        except BadPacket as exc:
            return self._drop(str(exc))

    def _expire(self, now: float) -> None:
        for sid in [
            s.managed_id
            for s in self._sessions.values()
            if now - s.last_seen > SESSION_IDLE_TIMEOUT
        ]:
            if self._sessions.pop(sid).keys is not None:
                self.stats.active -= 1
            self.stats.sessions_expired += 1

    def _sessionless_reply(self, req: wire.IpmiRequest) -> bytes | None:
        if req.netfn == 0x06 and req.cmd == 0x38:
            return self._channel_auth_caps(req)
        if req.netfn == 0x06 and req.cmd == 0x54:
            return self._cipher_suites(req)
        return None

    def _sessionless_v15(self, dgram: wire.Datagram) -> list[bytes]:
        req = wire.parse_ipmi_request_untrusted(dgram.payload)
        reply = self._sessionless_reply(req)
        return [wire.encode_v15(reply)] if reply else self._drop("command needs a session")

    def _sessionless_v20(self, dgram: wire.Datagram) -> list[bytes]:
        req = wire.parse_ipmi_request_untrusted(dgram.payload)
        reply = self._sessionless_reply(req)
        return (
            [wire.encode_v20_clear(wire.PAYLOAD_IPMI, reply)]
            if reply
            else self._drop("command needs a session")
        )

    def _channel_auth_caps(self, req: wire.IpmiRequest) -> bytes:
        # 22.13: channel 1; IPMI 2.0 extended capabilities only (no 1.5 auth types);
        # non-null user names; channel supports IPMI 2.0 connections.
        return wire.encode_ipmi_response(req, CC_OK, bytes([1, 0x80, 0x04, 0x02, 0, 0, 0, 0]))

    def _cipher_suites(self, req: wire.IpmiRequest) -> bytes:
        if len(req.data) < 3:
            return wire.encode_ipmi_response(req, CC_REQUEST_DATA_LENGTH)
        index = req.data[2] & 0x3F
        records = wire.cipher_suite_records(self.options.cipher_suites)
        return wire.encode_ipmi_response(
            req, CC_OK, bytes([1]) + records[index * 16 : index * 16 + 16]
        )

    # -- RMCP+ session establishment (13.17, 13.20-13.23)

    def _open_session_untrusted(self, p: bytes, now: float) -> list[bytes]:
        if len(p) < 32:
            raise BadPacket("open session request shorter than 32 bytes")
        tag, console_id = p[0], struct.unpack_from("<I", p, 4)[0]

        def fail(status: int) -> list[bytes]:
            return [
                wire.encode_v20_clear(
                    wire.PAYLOAD_OPEN_SESSION_RESPONSE, bytes([tag, status, 0, 0]) + p[4:8]
                )
            ]

        if (p[8], p[16], p[24]) != (0, 1, 2):
            raise BadPacket("open session request payloads out of order")
        suite = wire.suite_for(p[12] & 0x3F, p[20] & 0x3F, p[28] & 0x3F, self.options.cipher_suites)
        if suite is None:
            return fail(wire.STATUS_NO_CIPHER_SUITE_MATCH)
        if len(self._sessions) >= MAX_SESSIONS or self._refused < self.options.refuse_sessions:
            self._refused += 1
            return fail(wire.STATUS_NO_RESOURCES)
        managed_id = struct.unpack("<I", os.urandom(4))[0] or 1
        while managed_id in self._sessions:
            managed_id = (managed_id + 1) & 0xFFFFFFFF or 1
        self._sessions[managed_id] = _Session(managed_id, console_id, suite, now, now)
        self.stats.sessions_opened += 1
        body = bytes([tag, wire.STATUS_OK, ADMIN, 0]) + struct.pack("<II", console_id, managed_id)
        body += bytes([0, 0, 0, 8, suite.auth_alg, 0, 0, 0])
        body += bytes([1, 0, 0, 8, suite.integrity_alg, 0, 0, 0])
        body += bytes([2, 0, 0, 8, suite.conf_alg, 0, 0, 0])
        return [wire.encode_v20_clear(wire.PAYLOAD_OPEN_SESSION_RESPONSE, body)]

    def _rakp1_untrusted(self, p: bytes, now: float) -> list[bytes]:
        if len(p) < 28 or len(p) < 28 + p[27]:
            raise BadPacket("RAKP1 shorter than its user name")
        tag, managed_id = p[0], struct.unpack_from("<I", p, 4)[0]
        session = self._sessions.get(managed_id)
        if session is None:
            return [
                wire.encode_v20_clear(
                    wire.PAYLOAD_RAKP2,
                    bytes([tag, wire.STATUS_INVALID_SESSION_ID, 0, 0, 0, 0, 0, 0]),
                )
            ]
        console = struct.pack("<I", session.console_id)

        def fail(status: int) -> list[bytes]:
            self._sessions.pop(managed_id, None)
            self.stats.auth_failures += 1
            return [wire.encode_v20_clear(wire.PAYLOAD_RAKP2, bytes([tag, status, 0, 0]) + console)]

        session.last_seen = now
        session.console_random = p[8:24]
        session.role = p[24]
        session.user = p[28 : 28 + p[27]]
        if session.user != self.options.user.encode():
            return fail(wire.STATUS_UNAUTHORIZED_NAME)
        if session.role & 0x0F > ADMIN:
            return fail(wire.STATUS_UNAUTHORIZED_ROLE)
        session.bmc_random = os.urandom(16)
        kuid = self.options.password.encode()
        auth = session.suite.hmac(
            kuid,
            console
            + struct.pack("<I", managed_id)
            + session.console_random
            + session.bmc_random
            + self.guid
            + bytes([session.role, len(session.user)])
            + session.user,
        )
        body = bytes([tag, wire.STATUS_OK, 0, 0]) + console + session.bmc_random + self.guid + auth
        return [wire.encode_v20_clear(wire.PAYLOAD_RAKP2, body)]

    def _rakp3_untrusted(self, p: bytes, now: float) -> list[bytes]:
        if len(p) < 8:
            raise BadPacket("RAKP3 shorter than 8 bytes")
        tag, managed_id = p[0], struct.unpack_from("<I", p, 4)[0]
        session = self._sessions.get(managed_id)
        if session is None or not session.bmc_random or session.keys is not None:
            return [
                wire.encode_v20_clear(
                    wire.PAYLOAD_RAKP4,
                    bytes([tag, wire.STATUS_INVALID_SESSION_ID, 0, 0, 0, 0, 0, 0]),
                )
            ]
        console = struct.pack("<I", session.console_id)
        if p[1] != wire.STATUS_OK:  # the console refused our RAKP2 (wrong password on its side)
            self._sessions.pop(managed_id, None)
            self.stats.auth_failures += 1
            return []
        kuid = self.options.password.encode()
        role_user = bytes([session.role, len(session.user)]) + session.user
        expected = session.suite.hmac(kuid, session.bmc_random + console + role_user)
        if not hmac.compare_digest(expected, bytes(p[8:])):
            self._sessions.pop(managed_id, None)
            self.stats.auth_failures += 1
            return [
                wire.encode_v20_clear(
                    wire.PAYLOAD_RAKP4,
                    bytes([tag, wire.STATUS_INVALID_INTEGRITY_VALUE, 0, 0]) + console,
                )
            ]
        keys, sik = wire.SessionKeys.derive(
            session.suite, kuid, session.console_random + session.bmc_random + role_user
        )
        session.keys = keys
        session.last_seen = now
        self.stats.active += 1
        self.stats.peak_active = max(self.stats.peak_active, self.stats.active)
        icv = session.suite.hmac(
            sik, session.console_random + struct.pack("<I", managed_id) + self.guid
        )
        body = bytes([tag, wire.STATUS_OK, 0, 0]) + console + icv[: session.suite.icv_len]
        return [wire.encode_v20_clear(wire.PAYLOAD_RAKP4, body)]

    # -- established sessions

    def _session_packet_untrusted(
        self, data: bytes, dgram: wire.Datagram, now: float
    ) -> list[bytes]:
        session = self._sessions.get(dgram.session_id)
        if session is None or session.keys is None:
            return self._drop("unknown session")
        payload = session.keys.open_untrusted(data, dgram)
        req = wire.parse_ipmi_request_untrusted(payload)
        session.last_seen = now
        session.sequence += 1
        key = (req.rq_seq, req.netfn, req.cmd, req.data)
        if key == session.last_request:
            # A console that timed out resends the same request (same rqSeq): answer it
            # again without running it twice - a chassis cycle must not cycle twice.
            self.stats.duplicates += 1
            return [
                session.keys.seal(
                    wire.PAYLOAD_IPMI, session.console_id, session.sequence, session.last_response
                )
            ]
        self.stats.commands += 1
        code, reply = self._command(req, session)
        session.last_request = key
        session.last_response = wire.encode_ipmi_response(req, code, reply)
        out = session.keys.seal(
            wire.PAYLOAD_IPMI, session.console_id, session.sequence, session.last_response
        )
        if req.netfn == 0x06 and req.cmd == 0x3C and code == CC_OK:
            self._sessions.pop(session.managed_id, None)
            self.stats.active -= 1
            self.stats.sessions_closed += 1
        return [out]

    def _command(self, req: wire.IpmiRequest, session: _Session) -> tuple[int, bytes]:
        key = (req.netfn, req.cmd)
        d = req.data
        if key == (0x06, 0x01):  # Get Device ID (20.1)
            return CC_OK, bytes([0x20, 0x01, 0x01, 0x00, 0x02, 0x01, 0, 0, 0, 0, 0])
        if key == (0x06, 0x37):  # Get System GUID (22.14)
            return CC_OK, self.guid
        if key == (0x06, 0x38):
            return CC_OK, bytes([1, 0x80, 0x04, 0x02, 0, 0, 0, 0])
        if key == (0x06, 0x3B):  # Set Session Privilege Level (22.18)
            if d and d[0] & 0x0F > ADMIN:
                return 0x81, b""
            if d and d[0] & 0x0F:
                session.privilege = d[0] & 0x0F
            return CC_OK, bytes([session.privilege])
        if key == (0x06, 0x3C):  # Close Session (22.19)
            if len(d) < 4:
                return CC_REQUEST_DATA_LENGTH, b""
            if struct.unpack_from("<I", d)[0] != session.managed_id:
                return 0x87, b""  # invalid session id
            return CC_OK, b""
        if key == (0x00, 0x00):  # Get Chassis Capabilities (28.1)
            return CC_OK, bytes([0, 0x20, 0x20, 0x20, 0x20])
        if key == (0x00, 0x01):  # Get Chassis Status (28.2)
            return CC_OK, bytes([0x01 if self.power_on else 0x00, 0, 0, 0])
        if key == (0x00, 0x02):  # Chassis Control (28.3)
            if not d:
                return CC_REQUEST_DATA_LENGTH, b""
            return self._chassis_control(d[0] & 0x0F), b""
        if key == (0x00, 0x08):  # Set System Boot Options (28.12)
            if not d:
                return CC_REQUEST_DATA_LENGTH, b""
            self.boot_params[d[0] & 0x7F] = bytes(d[1:])
            return CC_OK, b""
        if key == (0x00, 0x09):  # Get System Boot Options (28.13)
            if not d:
                return CC_REQUEST_DATA_LENGTH, b""
            param = d[0] & 0x7F
            value = self.boot_params.get(param)
            if value is None:
                return 0x80, b""  # parameter not supported
            return CC_OK, bytes([0x01, param]) + value
        return CC_INVALID_COMMAND, b""

    def _chassis_control(self, number: int) -> int:
        action = CHASSIS_ACTIONS.get(number)
        if action is None:
            return CC_PARAMETER_OUT_OF_RANGE
        if action in ("cycle", "reset") and not self.power_on:
            return CC_NOT_IN_PRESENT_STATE  # as real BMCs answer a cycle of a powered-off host
        self.power_on = action in ("on", "cycle", "reset")
        self.history.append(action)
        # A once-only boot device is consumed by the boot it selected.
        flags = self.boot_params.get(5, bytes(5))
        if self.power_on:
            self.last_boot_device = self.boot_device if flags[0] & 0x80 else "default"
        if self.power_on and flags[0] & 0x80 and not flags[0] & 0x40:
            self.boot_params[5] = bytes([0]) + flags[1:]
        if self.hook is not None:
            try:
                self.hook(self, action)
            except Exception:  # the harness's bug must not take the BMC down
                log.exception("power hook of %s failed on %r", self.name, action)
                self.stats.drops["hook failed"] = self.stats.drops.get("hook failed", 0) + 1
        return CC_OK


@dataclass
class BmcFarm:
    """Many simulated BMCs served from one process: ``bmcs[i]`` listens on ``hosts[i]:ports[i]``."""

    host: str
    bmcs: list[SimulatedBmc]
    ports: list[int] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    def by_port(self) -> dict[int, SimulatedBmc]:
        return dict(zip(self.ports, self.bmcs, strict=True))

    def peak_sessions(self) -> int:
        """The most sessions any one BMC had established at the same time."""
        return max((b.stats.peak_active for b in self.bmcs), default=0)

    def summary(self) -> dict[str, Any]:
        s = [b.stats for b in self.bmcs]
        return {
            "bmcs": len(self.bmcs),
            "sessions_opened": sum(x.sessions_opened for x in s),
            "sessions_closed": sum(x.sessions_closed for x in s),
            "sessions_open_now": sum(x.active for x in s),
            "peak_sessions_per_bmc": self.peak_sessions(),
            "commands": sum(x.commands for x in s),
            "powered_on": sum(b.power_on for b in self.bmcs),
        }


async def _serve_one(
    sock: trio.socket.SocketType, bmc: SimulatedBmc, nursery: trio.Nursery
) -> None:
    async def send(datagrams: list[bytes], addr: Any, delay: float) -> None:
        if delay > 0:
            await trio.sleep(delay)
        for d in datagrams:
            try:
                await sock.sendto(d, addr)
            except OSError:
                bmc.stats.drops["send failed"] = bmc.stats.drops.get("send failed", 0) + 1

    while True:
        data, addr = await sock.recvfrom(4096)
        replies = bmc.datagram_received_untrusted(data, trio.current_time())
        if not replies:
            continue
        if bmc.options.delay > 0:
            nursery.start_soon(send, replies, addr, bmc.options.delay)
        else:
            await send(replies, addr, 0.0)


async def serve_bmcs(
    bmcs: Sequence[SimulatedBmc],
    host: str = "127.0.0.1",
    ports: Sequence[int] | None = None,
    *,
    hosts: Sequence[str] | None = None,
    make_socket: Callable[[int, int], socket.socket] | None = None,
    task_status: trio.TaskStatus[BmcFarm] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve each BMC on its own UDP socket; reports a ``BmcFarm`` with the addresses bound.

    ``bmcs[i]`` binds ``hosts[i]`` (default: ``host`` for all; any 127.0.0.0/8
    address works on Linux without setup) and ``ports[i]`` (default 0: any
    free port; 623 needs root). ``make_socket(family, type)``, when given,
    creates the stdlib sockets (e.g. inside a network namespace the caller
    made: cwboot.sim.netns).
    """
    farm = BmcFarm(host, list(bmcs))
    socks = []
    try:
        for i, _ in enumerate(bmcs):
            if make_socket is None:
                sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            else:
                sock = trio.socket.from_stdlib_socket(
                    make_socket(socket.AF_INET, socket.SOCK_DGRAM)
                )
            socks.append(sock)
            await sock.bind((hosts[i] if hosts else host, ports[i] if ports else 0))
            bound_host, bound_port = sock.getsockname()
            farm.hosts.append(bound_host)
            farm.ports.append(bound_port)
        async with trio.open_nursery() as nursery:
            for sock, bmc in zip(socks, bmcs, strict=True):
                nursery.start_soon(_serve_one, sock, bmc, nursery)
            task_status.started(farm)
    finally:
        for sock in socks:
            sock.close()


def make_bmcs(
    count: int, options: BmcOptions | None = None, hook: PowerHook | None = None
) -> list[SimulatedBmc]:
    """``count`` BMCs named bmc0.. sharing one set of options."""
    return [SimulatedBmc(f"bmc{i}", options, hook) for i in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve ``--count`` BMCs; print their ports as JSON, statistics for each stdin line and at EOF."""
    ap = argparse.ArgumentParser(
        prog="python -m cwboot.sim.bmc", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password", default="password")
    args = ap.parse_args(argv)
    bmcs = make_bmcs(args.count, BmcOptions(user=args.user, password=args.password))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            farm: BmcFarm = await nursery.start(serve_bmcs, bmcs, args.host)
            print(json.dumps({"host": farm.host, "ports": farm.ports}), flush=True)
            # Each line on stdin asks for statistics; EOF (the parent is gone) ends the farm.
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            while chunk := await stdin.receive_some():
                for _ in range(chunk.count(b"\n")):
                    print(json.dumps(farm.summary()), flush=True)
            print(json.dumps(farm.summary()), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
