"""Rootfs streaming throughput of cwboot's HTTP engine against baselines, in one run.

    .venv/bin/python bench/bench_http_stream.py [--size-mib 256] [--clients 1,64] [--json out.json]

What it does, all on 127.0.0.1:

1. Builds a synthetic root tree (half random, half compressible files) and imports it
   (import MB/s); imports it again unchanged and with one file changed (dedup).
2. Writes the image's frames, concatenated, into one file: the *same bytes* every
   server sends.
3. Serves them with (a) cwboot's engine (`/images/NAME/1/stream`, trio + h11 +
   sendfile from the chunk files), (b) a bare loop: one thread per connection,
   blocking `os.sendfile` of the one file, and (c) nginx (sendfile on, one worker).
   Each server is its own process; its CPU time comes from /proc.
4. For each server and client count, `curl --parallel` fetches the stream N times
   (1 client: sequentially on one keep-alive connection; 64: 64 at once) and checks
   sizes. Reports GB/s, the ratio to the bare loop, and server CPU seconds per GB
   (= server cores busy per GB/s).
5. RSS of the cwboot server after streaming a small and a 4x larger image.

The machine's cores are shared by clients and servers, so absolute figures are
bounded by curl's own CPU; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cwboot.control.images import ImageStore  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


# -- servers run as child processes of this script (modes selected by argv)


def serve_cwboot(store_dir: str, port_file: str, bulk_threads: int, sendfile_workers: int) -> None:
    import trio

    from cwboot.config import Config
    from cwboot.services.http import serve_http

    class NoObjects:
        def node_by_mac(self, mac: str) -> None:
            return None

        def get(self, kind: str, ref: str) -> None:
            return None

    config = Config()
    config.http.listen, config.http.port, config.http.max_streams = "127.0.0.1", 0, 100000
    config.http.sendfile_workers = sendfile_workers
    store = ImageStore(store_dir)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            srv = await nursery.start(
                lambda task_status: serve_http(
                    config, NoObjects(), store, heads=list, bulk_threads=bulk_threads,
                    task_status=task_status,
                )
            )
            Path(port_file).write_text(str(srv.port))

    trio.run(main)


def serve_bare(path: str, port_file: str) -> None:
    """The baseline: blocking os.sendfile of one file, a thread per connection, keep-alive."""
    size = os.path.getsize(path)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    Path(port_file).write_text(str(listener.getsockname()[1]))
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/zstd\r\n\r\n".encode()

    def handle(conn: socket.socket) -> None:
        with conn, open(path, "rb") as f:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf.split(b"\r\n\r\n", 1)[1]
                conn.sendall(head, socket.MSG_MORE)
                offset = 0
                while offset < size:
                    offset += os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# -- measurement helpers


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK
    return total


def children_of(pid: int) -> list[int]:
    """nginx's workers (its master forks them after start)."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_port(port_file: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    return int(port_file.read_text())


def fetch(url: str, clients: int, transfers: int, expect: int) -> float:
    """curl fetches url `transfers` times, `clients` at once; returns seconds."""
    args = ["curl", "-sS", "--fail", "-w", "%{size_download}\n"]
    if clients > 1:
        args += ["--parallel", "--parallel-immediate", "--parallel-max", str(clients)]
    for _ in range(transfers):
        args += ["-o", "/dev/null", url]
    t0 = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    seconds = time.monotonic() - t0
    if len(out) != transfers or any(int(n) != expect for n in out):
        raise RuntimeError(f"short transfers from {url}: {out[:5]}")
    return seconds


def make_tree(root: Path, size: int, seed: int) -> None:
    rnd = random.Random(seed)
    root.mkdir(parents=True)
    n = 0
    i = 0
    while n < size:
        d = root / f"d{i // 50:03d}"
        d.mkdir(exist_ok=True)
        length = min(rnd.choice([4096, 65536, 1 << 20, 4 << 20]), size - n)
        if i % 2:
            data = rnd.randbytes(length)
        else:
            words = [rnd.randbytes(8).hex() for _ in range(64)]
            data = (" ".join(rnd.choice(words) for _ in range(length // 17 + 1)).encode())[:length]
        (d / f"f{i:05d}").write_bytes(data)
        n += length
        i += 1


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=256, help="raw size of the image tree")
    ap.add_argument("--clients", default="1,64")
    ap.add_argument(
        "--transfers-per-client", type=int, default=0, help="default: 5 for 1 client, 2 for more"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds per client count (medians reported)"
    )
    ap.add_argument("--json", default="")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument(
        "--sendfile-workers", type=int, default=0, metavar="N",
        help="also measure cwboot with http.sendfile_workers=N (worker processes)",
    )  # fmt: skip
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cwboot-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, object] = {"size_mib": args.size_mib, "cores": os.cpu_count()}
    try:
        # 1. import throughput and dedup
        tree = work / "tree"
        make_tree(tree, args.size_mib << 20, seed=1)
        store = ImageStore(work / "store")
        m = store.import_tree("img", tree)
        s1 = store.last_import
        store.import_tree("img", tree)
        s2 = store.last_import
        victim = sorted(tree.rglob("f*"))[len(list(tree.rglob("f*"))) // 2]
        victim.write_bytes(victim.read_bytes()[::-1])
        store.import_tree("img", tree)
        s3 = store.last_import
        with open(
            victim, "ab"
        ) as f:  # grows by one byte: every later block shifts (fixed-size chunks)
            f.write(b"!")
        store.import_tree("img", tree)
        s4 = store.last_import
        results["import"] = {
            "raw_mb": m.raw_size / 1e6,
            "compressed_mb": m.compressed_size / 1e6,
            "first_mb_s": m.raw_size / 1e6 / s1.seconds,
            "unchanged_reimport_mb_s": m.raw_size / 1e6 / s2.seconds,
            "unchanged_reimport_new_chunks": s2.new_chunks,
            "one_file_rewritten_same_size_new_chunks": s3.new_chunks,
            "chunks": s3.chunks,
            "one_file_changed_dedup": s3.dedup_ratio,
            "mid_file_grown_new_chunks": s4.new_chunks,
            "mid_file_grown_dedup": s4.dedup_ratio,
        }
        print(
            f"import: {m.raw_size / 1e6:.0f} MB -> {m.compressed_size / 1e6:.0f} MB in {s1.seconds:.1f} s "
            f"({m.raw_size / 1e6 / s1.seconds:.0f} MB/s); unchanged re-import {m.raw_size / 1e6 / s2.seconds:.0f} MB/s, "
            f"{s2.new_chunks} new chunks; one file rewritten (same size): {s3.new_chunks}/{s3.chunks} new ({s3.dedup_ratio:.1%} deduplicated); "
            f"a middle file grown by 1 byte: {s4.new_chunks}/{s4.chunks} new ({s4.dedup_ratio:.1%} deduplicated)",
            flush=True,
        )
        # 2. the same bytes as one file
        www = work / "www"
        www.mkdir()
        with open(www / "stream.zst", "wb") as out:
            for c in m.chunks:
                out.write(store.chunk_file(c.id).read_bytes())
        size = m.compressed_size
        big_tree = work / "tree4x"
        make_tree(big_tree, 4 * (args.size_mib << 20), seed=2)
        big = store.import_tree("big", big_tree)
        shutil.rmtree(big_tree)

        # 3. servers
        servers: dict[str, tuple[str, list[int], subprocess.Popen[bytes]]] = {}
        variants = [("cwboot", 0, 0), ("cwboot+threads", 64, 0)]
        if args.sendfile_workers:
            variants.append(("cwboot+workers", 0, args.sendfile_workers))
        for label, threads, workers in variants:
            pf = work / f"cwboot{threads}-{workers}.port"
            cmd = [
                sys.executable,
                __file__,
                "--serve-cwboot",
                str(work / "store"),
                str(pf),
                str(threads),
                str(workers),
            ]
            p = subprocess.Popen(cmd)
            procs.append(p)
            servers[label] = (
                f"http://127.0.0.1:{wait_port(pf, p)}/images/img/1/stream",
                [p.pid],
                p,
            )
        pf = work / "bare.port"
        p = subprocess.Popen(
            [sys.executable, __file__, "--serve-bare", str(www / "stream.zst"), str(pf)]
        )
        procs.append(p)
        servers["bare sendfile"] = (f"http://127.0.0.1:{wait_port(pf, p)}/stream.zst", [p.pid], p)
        if not args.no_nginx and Path("/usr/sbin/nginx").exists():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                nport = s.getsockname()[1]
            conf = work / "nginx.conf"
            conf.write_text(
                f"user root; worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;\n"
                "events { worker_connections 4096; }\n"
                f"http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {work}/nb;"
                f" proxy_temp_path {work}/np; fastcgi_temp_path {work}/nf; uwsgi_temp_path {work}/nu; scgi_temp_path {work}/ns;\n"
                f"  server {{ listen 127.0.0.1:{nport}; root {www}; }} }}\n"
            )
            p = subprocess.Popen(["/usr/sbin/nginx", "-c", str(conf), "-p", str(work)])
            procs.append(p)
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", nport), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("nginx did not start") from None
                    time.sleep(0.05)
            children = [
                int(x) for x in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            ]
            servers["nginx"] = (f"http://127.0.0.1:{nport}/stream.zst", [p.pid, *children], p)

        # 4. throughput: rounds interleave the servers; medians are reported
        table = []
        for clients in [int(c) for c in args.clients.split(",")]:
            transfers = clients * (args.transfers_per_client or (10 if clients == 1 else 2))
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
            for url, _, _ in servers.values():
                fetch(url, 1, 1, size)  # warm the page cache and the server
            for _ in range(args.rounds):
                for name, (url, pids, proc) in servers.items():
                    all_pids = pids + children_of(proc.pid)
                    cpu0 = cpu_seconds(all_pids)
                    seconds = fetch(url, clients, transfers, size)
                    cpu = cpu_seconds(all_pids) - cpu0
                    gb = transfers * size / 1e9
                    samples[name].append((gb / seconds, cpu / gb))
            row: dict[str, dict[str, float]] = {}
            for name, got in samples.items():
                row[name] = {
                    "gb_s": statistics.median(g for g, _ in got),
                    "cpu_s_per_gb": statistics.median(c for _, c in got),
                    "gb_s_samples": [round(g, 3) for g, _ in got],  # type: ignore[dict-item]
                }
            bare = row["bare sendfile"]["gb_s"]
            for name, r in row.items():
                r["vs_bare"] = r["gb_s"] / bare
                print(
                    f"{clients:>3} clients  {name:<14} {r['gb_s']:6.2f} GB/s  {r['vs_bare']:5.2f}x bare  "
                    f"server {r['cpu_s_per_gb']:.3f} core-s/GB (= cores per GB/s)  "
                    f"samples {r['gb_s_samples']}",
                    flush=True,
                )
            table.append(
                {"clients": clients, "transfers": transfers, "rounds": args.rounds, "servers": row}
            )
        results["throughput"] = table

        # 5. RSS flat in image size
        url = servers["cwboot"][0]
        pid = servers["cwboot"][1][0]
        rss_small = rss_kib(pid)
        fetch(url.replace("/img/", "/big/"), 8, 8, big.compressed_size)
        rss_big = rss_kib(pid)
        results["rss"] = {
            "small_image_mb": m.compressed_size / 1e6,
            "big_image_mb": big.compressed_size / 1e6,
            "rss_after_small_kib": rss_small,
            "rss_after_big_kib": rss_big,
        }
        print(
            f"cwboot RSS: {rss_small / 1024:.1f} MiB after streaming {m.compressed_size / 1e6:.0f} MB images, "
            f"{rss_big / 1024:.1f} MiB after 8 parallel streams of a {big.compressed_size / 1e6:.0f} MB image",
            flush=True,
        )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM if p.args[0] == "/usr/sbin/nginx" else signal.SIGKILL)
            p.wait(timeout=10)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--serve-cwboot":
        serve_cwboot(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) == 4 and sys.argv[1] == "--serve-bare":
        serve_bare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
