"""EtcdStore: the Store contract on an etcd v3 cluster (HA: every head shares it).

The ``etcd3`` 0.12 client is blocking gRPC, so every call runs in a trio
worker thread (a private CapacityLimiter bounds how many at once). We use the
client for its channel and gRPC stubs and build the protobuf requests here:
its own ``transaction()`` hides the response header (we need the revision)
and its watch thread swallows compaction.

Watch: one gRPC Watch stream per ``watch()``, iterated by its own thread
(``trio.lowlevel.start_thread_soon``); each WatchResponse (all events of one
or more whole revisions — etcd never splits a revision) goes into a small
memory channel with ``trio.from_thread.run``, so a slow consumer pushes back
on the stream. Leaving the ``async with`` cancels the gRPC call and closes the
channel; the thread then ends by itself.

Errors: gRPC UNAVAILABLE / DEADLINE_EXCEEDED -> StoreUnavailable (and the
next call tries the next endpoint); a compacted start revision ->
WatchCompacted; an unknown lease -> LeaseExpired.

Limits of a stock etcd: at most 128 compares and 128 ops per transaction
(``--max-txn-ops``) and 1.5 MiB per request (``--max-request-bytes``);
``max_txn_ops``/``max_txn_bytes`` below tell bulk writers to stay under them.
Large reads are paged (``page_size`` keys per request, all at one revision)
and the client accepts messages up to 256 MiB, so a 100k-node cluster lists
and watches without hitting gRPC's 4 MiB default.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
import trio

with warnings.catch_warnings():
    # etcd3 0.12's generated protobuf modules use descriptor calls protobuf 3.20 deprecates.
    warnings.simplefilter("ignore", DeprecationWarning)
    import etcd3
    from etcd3 import etcdrpc

from cwboot.control.store.base import (
    Compare,
    KeyValue,
    LeaseExpired,
    Put,
    Store,
    StoreError,
    StoreUnavailable,
    WatchCompacted,
    WatchEvent,
    prefix_end,
)
from cwboot.control.store.base import Delete as DeleteOp

T = TypeVar("T")

_MAX_MESSAGE = 256 << 20
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    # gRPC's default reconnect back-off grows to 2 minutes; a head must notice etcd is back sooner.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Notice a dead peer on an idle watch stream (etcd's --grpc-keepalive-min-time is 5 s).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
# The trio side went away (watch closed, or the run ended): the stream thread just stops.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError)
_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http://host:port``, ``host:port`` or ``host`` -> (host, port)."""
    rest = endpoint.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or "]" in port:
        return rest, 2379
    return host.strip("[]"), int(port)


def _translate(exc: grpc.RpcError) -> StoreError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code in _DOWN:
        return StoreUnavailable(f"etcd unavailable: {details}")
    if code == grpc.StatusCode.NOT_FOUND and "lease" in (details or ""):
        return LeaseExpired(details)
    return StoreError(f"etcd: {details} ({code})")


class EtcdStore(Store):
    max_txn_ops = 128
    # Under etcd's 1.5 MiB default request limit, with room for the protobuf framing.
    max_txn_bytes = 1_200_000

    def __init__(
        self,
        endpoints: Sequence[str] = ("127.0.0.1:2379",),
        *,
        timeout: float = 5.0,
        page_size: int = 5000,
        max_threads: int = 16,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [_parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.page_size = page_size
        self._limiter = trio.CapacityLimiter(max_threads)
        self._lock = threading.Lock()
        self._current = 0
        self._client: etcd3.Etcd3Client | None = None
        self._closed = False

    # -- plumbing

    def _connected(self) -> etcd3.Etcd3Client:
        with self._lock:
            if self._client is None:
                host, port = self.endpoints[self._current]
                self._client = etcd3.client(host, port, timeout=self.timeout, grpc_options=_GRPC_OPTIONS)
            return self._client

    def _failover(self, client: etcd3.Etcd3Client) -> None:
        """After ``client`` failed, make the next call dial the next endpoint.

        With one endpoint the channel stays: gRPC reconnects it by itself.
        """
        with self._lock:
            failed = self._client is client
            if failed and len(self.endpoints) > 1:
                self._client = None
                self._current = (self._current + 1) % len(self.endpoints)
                client.close()

    def _call(self, fn: Callable[[etcd3.Etcd3Client], T]) -> T:
        client = self._connected()
        try:
            return fn(client)
        except grpc.RpcError as exc:
            err = _translate(exc)
            if isinstance(err, StoreUnavailable):
                self._failover(client)
            raise err from None

    async def _run(self, fn: Callable[[etcd3.Etcd3Client], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        return await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    # -- reads

    async def get(self, key: str) -> KeyValue | None:
        request = etcdrpc.RangeRequest(key=key.encode())

        def get(client: etcd3.Etcd3Client) -> KeyValue | None:
            response = client.kvstub.Range(request, self.timeout)
            if not response.kvs:
                return None
            kv = response.kvs[0]
            return KeyValue(key, kv.value, kv.mod_revision)

        return await self._run(get)

    def _range_sync(self, client: etcd3.Etcd3Client, prefix: str, revision: int) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` at ``revision`` (0: now), paged; returns the revision read."""
        start = prefix.encode() or b"\0"
        end = prefix_end(prefix).encode() or b"\0"
        out: list[KeyValue] = []
        while True:
            request = etcdrpc.RangeRequest(key=start, range_end=end, limit=self.page_size, revision=revision)
            response = client.kvstub.Range(request, self.timeout)
            if revision == 0:
                revision = response.header.revision
            out.extend(KeyValue(kv.key.decode(), kv.value, kv.mod_revision) for kv in response.kvs)
            if not response.more or not response.kvs:
                return out, revision
            start = response.kvs[-1].key + b"\0"

    def _list_sync(self, client: etcd3.Etcd3Client, prefixes: Sequence[str]) -> tuple[list[KeyValue], int]:
        for _ in range(5):
            revision = 0
            out: list[KeyValue] = []
            try:
                for prefix in prefixes:
                    kvs, revision = self._range_sync(client, prefix, revision)
                    out.extend(kvs)
                return out, revision
            except grpc.RpcError as exc:
                # The revision was compacted between pages: read again at a newer one.
                if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise
        raise StoreError("etcd kept compacting while we listed; giving up")

    async def list_prefixes(self, prefixes: Sequence[str]) -> tuple[list[KeyValue], int]:
        return await self._run(lambda client: self._list_sync(client, list(prefixes)))

    # -- writes

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | DeleteOp]) -> int | None:
        request = etcdrpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request_op(op) for op in ops],
        )

        def txn(client: etcd3.Etcd3Client) -> int | None:
            response = client.kvstub.Txn(request, self.timeout)
            return response.header.revision if response.succeeded else None

        return await self._run(txn)

    async def compact(self, revision: int) -> None:
        """Compact etcd's history before ``revision`` (what ``etcdctl compact`` does)."""
        request = etcdrpc.CompactionRequest(revision=revision, physical=True)
        await self._run(lambda client: client.kvstub.Compact(request, self.timeout))

    # -- leases

    async def grant_lease(self, ttl: int) -> int:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        request = etcdrpc.LeaseGrantRequest(TTL=ttl)

        def grant(client: etcd3.Etcd3Client) -> int:
            return int(client.leasestub.LeaseGrant(request, self.timeout).ID)

        return await self._run(grant)

    async def refresh_lease(self, lease: int) -> None:
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease)

        def refresh(client: etcd3.Etcd3Client) -> None:
            for response in client.leasestub.LeaseKeepAlive(iter([request]), self.timeout):
                if response.TTL <= 0:
                    raise LeaseExpired(f"lease {lease:x} not found")
                return
            raise StoreUnavailable("etcd closed the keep-alive stream")

        await self._run(refresh)

    async def revoke_lease(self, lease: int) -> None:
        request = etcdrpc.LeaseRevokeRequest(ID=lease)

        def revoke(client: etcd3.Etcd3Client) -> None:
            try:
                client.leasestub.LeaseRevoke(request, self.timeout)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        await self._run(revoke)

    # -- watch

    @asynccontextmanager
    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        client = await trio.to_thread.run_sync(self._connected, limiter=self._limiter)
        watch = _EtcdWatch(self, client, prefix, from_revision)
        try:
            await watch.start()
            yield watch
        finally:
            watch.close()

    async def aclose(self) -> None:
        self._closed = True
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await trio.to_thread.run_sync(client.close)

    # Last in the class: a method named list shadows the builtin in annotations below it.
    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self._run(lambda client: self._list_sync(client, [prefix]))


def _compare(c: Compare) -> Any:
    if c.mod_revision == 0:
        # mod_revision 0 means "absent": etcd expresses that as version == 0.
        return etcdrpc.Compare(
            key=c.key.encode(), result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.VERSION, version=0
        )
    return etcdrpc.Compare(
        key=c.key.encode(), result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.MOD, mod_revision=c.mod_revision
    )


def _request_op(op: Put | DeleteOp) -> Any:
    if isinstance(op, Put):
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease))
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=op.key.encode()))


# Items the stream thread hands to trio: a list of events, or one of these.
_CREATED = "created"


class _EtcdWatch:
    def __init__(self, store: EtcdStore, client: etcd3.Etcd3Client, prefix: str, from_revision: int) -> None:
        self._store = store
        self._client = client
        create = etcdrpc.WatchCreateRequest(
            key=prefix.encode() or b"\0",
            range_end=prefix_end(prefix).encode() or b"\0",
            start_revision=max(from_revision, 0),
        )
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(etcdrpc.WatchRequest(create_request=create))
        self._send, self._receive = trio.open_memory_channel[Any](4)
        self._call: Any = None
        self._closed = False
        self._buffer: list[WatchEvent] = []
        self._position = 0

    def _request_stream(self) -> Iterator[Any]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    async def start(self) -> None:
        """Open the stream and wait until etcd confirms the watch (or refuses it)."""
        token = trio.lowlevel.current_trio_token()
        self._call = etcdrpc.WatchStub(self._client.channel).Watch(self._request_stream())
        trio.lowlevel.start_thread_soon(lambda: self._pump(token), lambda _outcome: None)
        first = await self._next_item()
        if first != _CREATED:
            raise StoreError(f"etcd answered a watch request with {first!r}")

    def _pump(self, token: trio.lowlevel.TrioToken) -> None:
        """Stream thread: forward every response into trio until cancelled."""
        item: Any
        try:
            for response in self._call:
                if response.compact_revision:
                    item = WatchCompacted(response.compact_revision)
                elif response.canceled:
                    item = StoreUnavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                elif response.created:
                    item = _CREATED
                elif not response.events:
                    continue
                else:
                    item = [
                        WatchEvent(
                            "put" if ev.type == ev.PUT else "delete",
                            ev.kv.key.decode(),
                            ev.kv.value if ev.type == ev.PUT else None,
                            ev.kv.mod_revision,
                        )
                        for ev in response.events
                    ]
                trio.from_thread.run(self._send.send, item, trio_token=token)
                if isinstance(item, Exception):
                    return
            item = StoreUnavailable("etcd ended the watch stream")
        except grpc.RpcError as exc:
            item = _translate(exc)
            if isinstance(item, StoreUnavailable):
                self._store._failover(self._client)
        except _GONE:
            return
        finally:
            self._requests.put(None)
        try:
            trio.from_thread.run(self._send.send, item, trio_token=token)
        except _GONE:
            pass

    async def _next_item(self) -> Any:
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        self._requests.put(None)
        self._receive.close()

    def __aiter__(self) -> _EtcdWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        while self._position >= len(self._buffer):
            item = await self._next_item()
            if item == _CREATED:
                continue
            self._buffer = item
            self._position = 0
        event = self._buffer[self._position]
        self._position += 1
        return event

