"""HTTP engine cost per request: chunk requests over keep-alive, cwboot vs nginx, same files, same run.

    .venv/bin/python bench/bench_http_requests.py [--clients 256] [--seconds 8] [--rounds 3]
        [--image-mib 32] [--sendfile-workers 0,2] [--no-nginx] [--json out.json]

A boot storm's rootfs phase is tens of thousands of chunk requests (`GET
/chunks/{id}`, one per stored zstd frame, each on the node's keep-alive
connection). What the HTTP engine spends per request, beyond the kernel's copy
of the bytes, decides how much of the head's cores a storm leaves for
everything else. This measures exactly that path, over loopback, no root
needed:

* the image store gets a synthetic rootfs (cwboot.sim.content, `--image-mib`
  MiB, about 2:1 compressible, the storm's default image);
* the servers, in turn, each a child process: cwboot's engine
  (cwboot.services.http.serve_http as bench_http_stream.py runs it: routing,
  ETags, admission with a budget no client reaches; one variant per
  `--sendfile-workers` value) and
  nginx (2 workers, sendfile, keep-alive; the storm baseline's config) serving
  the same chunk files;
* `--clients` keep-alive connections from one trio process (the storm's own
  HTTP client, cwboot.sim.http_client) each fetch every chunk of the image in
  order, over and over, for `--seconds`; bodies are counted, not kept.

Reported per server (median of `--rounds`): requests/s, GB/s, and the
server's CPU (utime + stime of the server and its children from /proc) per
request and per GB. The ratio column is against nginx in the same run. The
machine's 2 cores are shared by client and server: requests/s moves with the
client, CPU per request much less.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from bench_http_stream import cpu_seconds, serve_cwboot, wait_port  # noqa: E402

from cwboot.control.images import ImageStore  # noqa: E402


def family(pid: int) -> list[int]:
    """The process and its descendants (sendfile workers, nginx workers)."""
    out = [pid]
    for p in out:
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                out += [int(x) for x in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start") from None
            time.sleep(0.05)


async def drive(port: int, paths: list[str], sizes: list[int], clients: int, seconds: float) -> dict[str, Any]:
    import trio

    from cwboot.sim.http_client import HttpConnection

    done = {"requests": 0, "bytes": 0, "errors": 0}
    deadline = trio.current_time() + seconds

    async def client(i: int) -> None:
        conn = HttpConnection("127.0.0.1", port)
        k = i % len(paths)
        try:
            while trio.current_time() < deadline:
                r = await conn.request("GET", paths[k], on_data=lambda v: None)
                if r.status != 200 or r.body_bytes != sizes[k]:
                    done["errors"] += 1
                    return
                done["requests"] += 1
                done["bytes"] += r.body_bytes
                k = (k + 1) % len(paths)
        finally:
            conn.close()

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, i)
    return done


def measure(port: int, pids: list[int], paths: list[str], sizes: list[int], clients: int, seconds: float) -> dict[str, Any]:
    import trio

    trio.run(drive, port, paths, sizes, clients, 1.0)  # warm-up: connections, page cache
    family_pids = sorted({q for p in pids for q in family(p)})
    cpu0, t0 = cpu_seconds(family_pids), time.monotonic()
    done = trio.run(drive, port, paths, sizes, clients, seconds)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(family_pids) - cpu0
    if done["errors"]:
        raise RuntimeError(f"{done['errors']} clients got a wrong answer")
    return {
        "requests": done["requests"],
        "bytes": done["bytes"],
        "wall_s": wall,
        "req_per_s": done["requests"] / wall,
        "gb_per_s": done["bytes"] / wall / 1e9,
        "server_cpu_s": cpu,
        "cpu_us_per_request": cpu / done["requests"] * 1e6,
        "cpu_s_per_gb": cpu / (done["bytes"] / 1e9),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image-mib", type=int, default=32)
    ap.add_argument("--sendfile-workers", default="0,2", help="cwboot variants (http.sendfile_workers)")
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--json", default="")
    ap.add_argument("--serve-cwboot", nargs=3, metavar=("STORE", "PORT_FILE", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_cwboot:
        serve_cwboot(args.serve_cwboot[0], args.serve_cwboot[1], 0, int(args.serve_cwboot[2]))
        return 0

    from cwboot.sim.baseline import nginx_conf
    from cwboot.sim.content import prepare

    work = Path(tempfile.mkdtemp(prefix="cwboot-bench-req-"))
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        store = ImageStore(work / "store")
        content = prepare(store, work / "content", image=f"synthetic:{args.image_mib}")
        m = content.manifest
        paths = [f"/chunks/{c.id}" for c in m.chunks]
        sizes = [c.compressed_size for c in m.chunks]
        docroot = work / "docroot"
        (docroot / "chunks").mkdir(parents=True)
        for c in m.chunks:
            src = store.chunk_path(c.id)
            assert src is not None
            dst = docroot / "chunks" / c.id
            if not dst.exists():
                os.symlink(src, dst)
        print(f"image: {len(paths)} chunks, {sum(sizes) / 1e6:.1f} MB compressed; "
              f"{args.clients} keep-alive clients, {args.seconds:g} s x {args.rounds} rounds", flush=True)

        variants: list[tuple[str, list[str] | None, int]] = []
        if not args.no_nginx and shutil.which("nginx"):
            variants.append(("nginx", None, 0))
        for w in [int(x) for x in args.sendfile_workers.split(",") if x != ""]:
            variants.append((f"cwboot workers={w}", None, w))
        for rnd in range(args.rounds):
            for name, _, workers in variants:
                port_file = work / f"port-{name.replace(' ', '_')}-{rnd}"
                if name == "nginx":
                    ng = work / f"nginx-{rnd}"
                    ng.mkdir()
                    import socket

                    s = socket.socket()
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                    s.close()
                    (ng / "nginx.conf").write_text(nginx_conf(ng, docroot, "127.0.0.1", port))
                    proc = subprocess.Popen(
                        ["nginx", "-p", str(ng), "-e", str(ng / "nginx-error.log"), "-c", str(ng / "nginx.conf")]
                    )
                    try:
                        wait_listening(port, proc)
                    except BaseException:
                        proc.kill()
                        proc.wait()
                        raise
                else:
                    proc = subprocess.Popen(
                        [sys.executable, __file__, "--serve-cwboot", str(work / "store"), str(port_file), str(workers)]
                    )
                try:
                    if name != "nginx":
                        port = wait_port(port_file, proc)
                    r = measure(port, [proc.pid], paths, sizes, args.clients, args.seconds)
                finally:
                    # parent first: an nginx master would respawn a killed worker
                    for pid in family(proc.pid):
                        try:
                            os.kill(pid, 9)
                        except ProcessLookupError:
                            pass
                    proc.wait()
                results.setdefault(name, []).append(r)
                print(f"  round {rnd + 1} {name:20s} {r['req_per_s']:8.0f} req/s {r['gb_per_s']:5.2f} GB/s "
                      f"{r['cpu_us_per_request']:6.0f} us CPU/request {r['cpu_s_per_gb']:5.3f} CPU-s/GB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    base = "nginx" if "nginx" in results else None
    print()
    print("| server | req/s | GB/s | server CPU us/request | CPU-s/GB | CPU/request vs nginx |")
    print("|---|---|---|---|---|---|")
    for name in results:
        ratio = f"{med(name, 'cpu_us_per_request') / med(base, 'cpu_us_per_request'):.2f}" if base else "-"
        print(f"| {name} | {med(name, 'req_per_s'):.0f} | {med(name, 'gb_per_s'):.2f} | "
              f"{med(name, 'cpu_us_per_request'):.0f} | {med(name, 'cpu_s_per_gb'):.3f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
