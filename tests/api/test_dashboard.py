"""The node-status dashboard (``GET /dashboard``) in a real headless Chromium against a real API.

The API is served by hypercorn on 127.0.0.1 over a real store (tests/api/harness.py).
Nodes, status objects and heads are created through the REST API; some of their
free-text fields carry markup. Chromium loads the page, runs its script and dumps
the DOM (``--dump-dom``), and the test reads that DOM with html.parser: nodes,
stages, summary counts and head counters are there, and the markup is text,
never an element. Chromium runs in its own process group with a private profile
in tmp_path; the group is killed by its id when the run ends, even on failure.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import trio

from cwboot.api.dashboard import DASHBOARD_PATH, dashboard_routes
from cwboot.head import HeadPorts, run_head
from tests.api.harness import READER, ServedApi
from tests.test_head import TOKEN, head_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/apt-packages.txt)")

# Text an attacker with write access to a status report or a stats label could try.
IMG = "<img src=x onerror=\"document.title='pwned'\">"
SCRIPT = "<script>document.title='pwned'</script>"
MACS = {i: f"52:54:00:00:00:{i:02x}" for i in range(1, 5)}
# (node index, stage) reported to the head's HTTP service, in this order.
REPORTS = [(1, "initramfs"), (1, "fetching"), (1, "switch_root"), (1, "up"), (2, IMG), (3, "failed")]


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def walk(self) -> Iterator[Element]:
        yield self
        for c in self.children:
            if isinstance(c, Element):
                yield from c.walk()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.walk()
            if (tag is None or e.tag == tag) and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def by_id(self, ident: str) -> Element:
        (found,) = self.find_all(id=ident)
        return found


VOID = {"meta", "link", "input", "br", "img", "hr", "source", "area", "base", "col", "embed", "wbr"}


class DomBuilder(HTMLParser):
    """Chromium's serialized DOM -> a tree of Elements (the serializer closes every element)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, (tag, [e.tag for e in self.stack])
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_dom(html: str) -> Element:
    builder = DomBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def dump_dom(url: str, profile: Path) -> Element:
    """What a headless Chromium shows at ``url`` after up to 5 s of (virtual) page time."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--disable-component-update",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url,
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        # The browser's helpers (zygote, renderer) share its process group, led by its pid.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    html = out.decode()
    assert proc.returncode == 0 and "<body" in html, err.decode()[-2000:]
    return parse_dom(html)


async def seed_head(api: str, http: str) -> None:
    """4 nodes and a second head through the REST API; status reports through the head's HTTP service.

    n1 boots through four stages to up, n2 reports a stage with markup in it (stage
    and phase name), n3 fails, n4 never reports.
    """
    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as admin:
        for path, doc in [
            ("/api/v1/naming_pools", {"name": "default", "network": "10.54.0.0/16"}),
            ("/api/v1/boot_configs", {"name": "compute", "kernel": "vmlinuz"}),
            ("/api/v1/heads", {"name": "h2", "addresses": ["127.0.0.2"]}),
            ("/api/v1/nodes", {"index": 1, "mac": [MACS[1], "52:54:00:00:01:01"], "ip": "10.54.9.9",
                               "boot_config": "compute"}),
            ("/api/v1/nodes", {"index": 2, "mac": [MACS[2]], "attributes": {"rack": IMG}, "description": SCRIPT}),
            ("/api/v1/nodes", {"index": 3, "mac": [MACS[3]]}),
            ("/api/v1/nodes", {"index": 4, "mac": [MACS[4]]}),
        ]:  # fmt: skip
            r = await admin.post(path, json=doc)
            assert r.status_code == 201, (path, r.text)
        async with httpx.AsyncClient(base_url=http, timeout=10) as node:
            # The head learns of new nodes through its store watch; a report before that is
            # ignored, so report until the status shows it (bounded).
            with trio.move_on_after(20):
                for index, stage in REPORTS:
                    while True:
                        r = await node.post(f"/boot/status/{MACS[index]}", json={"stage": stage})
                        assert r.status_code == 204, r.text
                        got = (await admin.get(f"/api/v1/status/n{index}")).json()
                        if got.get("stage") == stage:
                            break
                        await trio.sleep(0.05)
                    await trio.sleep(0.2)  # phases a little apart
        statuses = (await admin.get("/api/v1/status")).json()
        assert [(s["name"], s["stage"]) for s in statuses] == [("n1", "up"), ("n2", IMG), ("n3", "failed")]


def rows_of(dom: Element) -> dict[str, dict[str, str]]:
    """Node table: name -> {cell class: text}, plus the row's class."""
    rows = {}
    for tr in dom.by_id("node-rows").find_all("tr"):
        cells = {td.attrs["class"]: td.text for td in tr.find_all("td")}
        rows[cells["name"]] = {**cells, "row": tr.attrs.get("class", "")}
    return rows


def counts_of(dom: Element) -> dict[str, int]:
    return {b.attrs["data-count"]: int(b.text) for b in dom.by_id("summary").find_all("b")}


def test_dashboard_is_served_without_a_token_and_asks_for_nothing_outside(api: ServedApi) -> None:
    with api.client(token=None) as anonymous:
        r = anonymous.get(DASHBOARD_PATH)
        assert anonymous.get("/api/v1/nodes").status_code == 401  # the data still needs a token
        assert anonymous.get(DASHBOARD_PATH + "/").status_code == 200
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.text
    # Self-contained: no URL to another origin, no external script or stylesheet.
    assert not re.search(r"https?:|\bsrc\s*=|@import|url\(|<link(?![^>]*href=\"data:)", page, re.I)
    assert page.count("<script>") == 1 and page.count("<style>") == 1
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]{44}';", csp), csp
    assert "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    # The page is not part of the API's OpenAPI document.
    with api.client(READER) as reader:
        doc = reader.get("/api/v1/openapi.json").json()
    assert DASHBOARD_PATH not in doc["paths"] and "/api/v1/health" in doc["paths"]


@needs_chromium
def test_chromium_shows_nodes_stages_counts_and_counters_with_a_read_token(tmp_path: Path) -> None:
    trio.run(_shows_nodes_stages_counts_and_counters, tmp_path)


async def _shows_nodes_stages_counts_and_counters(tmp_path: Path) -> None:
    cfg = head_config(tmp_path / "state", **{"api.read_tokens": f'["{READER}"]', "tftp.own_process": "false"})
    async with trio.open_nursery() as nursery:
        ports: HeadPorts = await nursery.start(functools.partial(run_head, cfg))
        api = f"http://127.0.0.1:{ports.api}"
        await seed_head(api, f"http://127.0.0.1:{ports.http}")
        url = f"{api}{DASHBOARD_PATH}#token={READER}"
        assert f"{api}{DASHBOARD_PATH}" in "\n".join(ports.describe())
        dom = await trio.to_thread.run_sync(dump_dom, url, tmp_path / "profile")
        nursery.cancel_scope.cancel()

    assert dom.find_all("body")[0].attrs.get("data-state") == "ok", dom.by_id("error").text
    assert "hidden" not in dom.by_id("board").attrs and "hidden" in dom.by_id("need-token").attrs
    # h1 registered itself under a lease; h2 was added through the API.
    assert counts_of(dom) == {"total": 4, "up": 1, "booting": 1, "failed": 1, "unseen": 1, "heads": 2}
    assert "(h1, h2)" in dom.by_id("summary").text

    rows = rows_of(dom)
    assert list(rows) == ["n1", "n2", "n3", "n4"]
    n1, n2, n3, n4 = (rows[n] for n in ("n1", "n2", "n3", "n4"))
    assert n1["row"] == "up" and n1["stage"] == "up" and n1["head"] == "h1"
    assert n1["mac"] == f"{MACS[1]}, 52:54:00:00:01:01" and n1["ip"] == "10.54.9.9"
    assert n1["boot-config"] == "compute" and re.fullmatch(r"\d+s ago", n1["last-seen"]), n1
    # Phases in the order they happened, each with the time since the one before, and the total.
    assert re.fullmatch(r"initramfsfetching \+\d\.\dsswitch_root \+\d\.\dsup \+\d\.\ds \(\d\.\ds\)", n1["phases"]), n1
    assert n2["row"] == "booting" and n2["ip"] == "10.54.0.102"  # derived: network + ip_offset 100 + index
    assert n2["boot-config"] == "default"
    assert n3["row"] == "failed" and n3["stage"] == "failed" and n3["head"] == "h1"
    assert n4["row"] == "unseen" and n4["stage"] == "not seen" and n4["last-seen"] == "-" and n4["head"] == ""

    # Markup from the API is text on the page, not elements.
    assert n2["stage"] == IMG and n2["phases"] == IMG
    assert dom.find_all("img") == [] and len(dom.find_all("script")) == 1
    assert dom.find_all("title")[0].text == "cwboot nodes"
    assert dom.find_all("tr", data_node="n2")[0].find_all("td")[4].text == IMG

    # The head's own counters (GET /api/v1/stats): the four status reports that counted.
    assert re.fullmatch(r"counters of head h1 since start, up \d+s", dom.by_id("stats-title").text)
    stats = {(service, name): value for service, name, value in
             (tuple(td.text for td in tr.find_all("td")) for tr in dom.by_id("stats-rows").find_all("tr"))}  # fmt: skip
    assert int(stats["http", "requests"]) >= len(REPORTS) and stats["http", "responses: 204"] == stats["http", "requests"]
    assert ("dhcp", "received") in stats and stats["dhcp", "drops"] == "-"


@needs_chromium
def test_chromium_opens_filtered_from_the_fragment(api: ServedApi, tmp_path: Path) -> None:
    with api.client() as admin:
        for i in (1, 2, 3):
            r = admin.post("/api/v1/nodes", json={"index": i, "mac": [MACS[i]], "groups": [f"rack{i}"]})
            assert r.status_code == 201, r.text
    dom = dump_dom(f"{api.url}{DASHBOARD_PATH}#token={READER}&filter=RACK2", tmp_path / "profile")
    assert list(rows_of(dom)) == ["n2"]
    assert dom.by_id("shown").text == "1 of 3 shown"
    assert counts_of(dom) == {"total": 3, "up": 0, "booting": 0, "failed": 0, "unseen": 3, "heads": 0}
    assert "hidden" in dom.by_id("stats").attrs  # this API has no stats route (404): no counters shown


@needs_chromium
def test_chromium_without_a_token_asks_for_one(api: ServedApi, tmp_path: Path) -> None:
    dom = dump_dom(f"{api.url}{DASHBOARD_PATH}", tmp_path / "profile")
    assert dom.find_all("body")[0].attrs.get("data-state") == "need-token"
    assert "hidden" not in dom.by_id("need-token").attrs and "hidden" in dom.by_id("board").attrs
    assert "needs an API token" in dom.by_id("token-reason").text
    assert dom.by_id("node-rows").children == []


@needs_chromium
def test_chromium_says_plainly_when_the_token_is_refused(api: ServedApi, tmp_path: Path) -> None:
    dom = dump_dom(f"{api.url}{DASHBOARD_PATH}#token=not-a-token", tmp_path / "profile")
    assert dom.find_all("body")[0].attrs.get("data-state") == "need-token"
    reason = dom.by_id("token-reason").text
    assert "refused this token" in reason and "401: unknown token" in reason, reason
    assert "hidden" in dom.by_id("board").attrs


@contextmanager
def page_without_api() -> Iterator[str]:
    """127.0.0.1:<port> serving only the dashboard page (with its real headers); every other
    request has its connection closed unanswered, as when the API is down. Stops on exit."""
    page = dashboard_routes()[0]
    response = trio.run(page.handler, None)  # the handler ignores its request
    head = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
    answer = f"HTTP/1.1 200 OK\r\n{head}content-length: {len(response.body)}\r\nconnection: close\r\n\r\n".encode()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = conn.recv(65536)
                if request.startswith(f"GET {DASHBOARD_PATH} ".encode()):
                    conn.sendall(answer + response.body)

    thread = threading.Thread(target=serve, name="page-without-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        listener.close()
        assert not thread.is_alive()


@needs_chromium
def test_chromium_says_plainly_when_the_api_is_down(tmp_path: Path) -> None:
    with page_without_api() as url:
        dom = dump_dom(f"{url}{DASHBOARD_PATH}#token={READER}", tmp_path / "profile")
    assert dom.find_all("body")[0].attrs.get("data-state") == "error"
    error = dom.by_id("error")
    assert "hidden" not in error.attrs
    assert error.text.startswith("cannot reach the cwboot API") and "retrying every 5 s" in error.text, error.text
    assert "hidden" in dom.by_id("need-token").attrs  # the token was not the problem
