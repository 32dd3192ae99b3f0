"""Image store verbs that work on this head's files: ``cwboot images import|versions|verify|
rollback|remove|gc|add-file`` and ``cwboot initramfs build``.

They open the store at ``images_dir`` from the config (``--set images.store_dir=...``),
so they run on a head. The store's index is what the head's HTTP engine serves
from, so an import or rollback takes effect for the next iPXE script at once.
After a change they also ask the head to mirror the image's versions/latest
into its ``image`` object (``POST /api/v1/images/{name}/sync``; what ``cwboot
images ls`` and the dashboard show); when no API answers they say so, and the
head mirrors them when it sees the index change (``keep_images_mirrored``).
Progress bars go to a terminal's stderr; when stderr is not a TTY the commands
are quiet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from cwboot.cli.command import CliError, add_command, add_group, group_verbs, load_config
from cwboot.control.images import ImageError, ImageStore
from cwboot.control.initramfs import (
    DEFAULT_MODULES,
    InitramfsError,
    build_initramfs,
    fetch_debian_kernel,
)
from cwboot.protocol.manifest import BadManifest


class _Progress:
    """``label [#####.....] 45% 120.3 MB/s`` redrawn on a TTY's stderr, at most 10 times a second."""

    def __init__(self, label: str, unit_bytes: bool = True) -> None:
        self.label = label
        self.unit_bytes = unit_bytes
        self.enabled = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        rate = ""
        if self.unit_bytes:
            rate = f" {done / max(now - self.t0, 1e-6) / 1e6:.1f} MB/s"
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac * 100:3.0f}%{rate}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _store(args: argparse.Namespace) -> ImageStore:
    return ImageStore.from_config(load_config(args))


def _mirror(args: argparse.Namespace, name: str) -> None:
    """Have the head mirror the image's versions/latest into its object; a missing API is not an error."""
    from urllib.parse import quote

    from cwboot.cli.client import api_client

    try:
        with api_client(args) as api:
            # versions/latest are read-only through the API: the head mirrors its own store.
            api.request("POST", f"/api/v1/images/{quote(name, safe='')}/sync")
    except CliError as exc:
        print(
            f"cwboot: image object not updated ({exc}); the head serves this change already "
            "and syncs the object (what 'images ls' shows) within seconds of seeing it",
            file=sys.stderr,
        )


def _print(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc, indent=2) if getattr(args, "json", False) else text)


def _import(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        m = store.import_source(
            args.name,
            args.source,
            version=args.version or "",
            progress=_Progress(f"import {args.name}"),
        )
    except (ImageError, BadManifest, OSError) as exc:
        raise CliError(str(exc)) from None
    s = store.last_import
    _mirror(args, args.name)
    doc = {
        "name": m.name,
        "version": m.version,
        "chunks": len(m.chunks),
        "new_chunks": s.new_chunks,
        "raw_size": m.raw_size,
        "compressed_size": m.compressed_size,
        "seconds": round(s.seconds, 3),
    }
    mbps = m.raw_size / max(s.seconds, 1e-6) / 1e6
    _print(
        args,
        doc,
        f"{m.name} version {m.version}: {len(m.chunks)} chunks ({s.new_chunks} new), "
        f"{m.raw_size / 1e6:.1f} MB -> {m.compressed_size / 1e6:.1f} MB in {s.seconds:.1f} s ({mbps:.0f} MB/s)",
    )
    return 0


def _versions(args: argparse.Namespace) -> int:
    store = _store(args)
    names = [args.name] if args.name else store.names()
    docs = {n: store.object_doc(n) for n in names}
    if getattr(args, "json", False):
        print(json.dumps(docs, indent=2))
        return 0
    print(f"{'image':<20} {'version':<10} {'chunks':>7} {'raw MB':>9} {'zstd MB':>9}  latest")
    for n, doc in docs.items():
        for v in doc["versions"]:
            mark = "*" if v["version"] == doc["latest"] else ""
            print(
                f"{n:<20} {v['version']:<10} {v['chunks']:>7} {v['raw_size'] / 1e6:>9.1f} "
                f"{v['compressed_size'] / 1e6:>9.1f}  {mark}"
            )
    return 0


def _verify(args: argparse.Namespace) -> int:
    store = _store(args)
    report = store.verify(args.name or "", progress=_Progress("verify", unit_bytes=False))
    doc = {
        "checked": report.checked,
        "corrupt": report.corrupt,
        "missing": report.missing,
        "broken_images": report.broken_images,
    }
    lines = [f"checked {report.checked} chunks: {'ok' if report.ok else 'PROBLEMS'}"]
    lines += [f"corrupt (quarantined): {c}" for c in report.corrupt]
    lines += [f"missing: {c}" for c in report.missing]
    lines += [
        f"image {i} is broken ({len(ids)} chunks): re-import it"
        for i, ids in report.broken_images.items()
    ]
    _print(args, doc, "\n".join(lines))
    return 0 if report.ok else 1


def _rollback(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        version = store.rollback(args.name, args.version or "")
    except ImageError as exc:
        raise CliError(str(exc)) from None
    _mirror(args, args.name)
    _print(
        args,
        {"name": args.name, "latest": version},
        f"{args.name}: latest is now version {version}",
    )
    return 0


def _remove(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.remove_version(args.name, args.version)
    except ImageError as exc:
        raise CliError(str(exc)) from None
    _mirror(args, args.name)
    _print(
        args,
        {"name": args.name, "removed": args.version},
        f"{args.name}: version {args.version} removed (run gc to free its chunks)",
    )
    return 0


def _gc(args: argparse.Namespace) -> int:
    report = _store(args).gc(keep_files=not args.files)
    doc = vars(report)
    _print(
        args,
        doc,
        f"removed {report.chunks_removed} chunks ({report.bytes_freed / 1e6:.1f} MB), "
        f"{report.tmp_removed} dead import folders, {report.files_removed} files",
    )
    return 0


def _add_file(args: argparse.Namespace) -> int:
    try:
        ref = _store(args).store_file(args.path, alias=args.alias or "")
    except (OSError, BadManifest) as exc:
        raise CliError(str(exc)) from None
    _print(
        args,
        {"id": ref.id, "size": ref.size, "alias": ref.alias},
        f"{ref.id} {ref.size} {ref.alias}".rstrip(),
    )
    return 0


def _initramfs_build(args: argparse.Namespace) -> int:
    config = load_config(args)
    kernel = None
    modules_dir = args.modules_dir
    try:
        if args.kernel_package:
            kernel = fetch_debian_kernel(
                args.cache or config.state_dir / "kernel-cache", args.kernel_package
            )
            modules_dir = modules_dir or kernel.modules_dir
        modules = args.modules.split(",") if args.modules else DEFAULT_MODULES
        info = build_initramfs(
            args.out, kernel_modules=modules_dir, modules=modules, compression=args.compression
        )
    except (InitramfsError, OSError) as exc:
        raise CliError(str(exc)) from None
    doc: dict[str, Any] = {"path": str(info.path), "size": info.size, "modules": info.modules}
    text = [f"{info.path}: {info.size} bytes, modules: {' '.join(info.modules) or 'none'}"]
    if args.store:
        store = ImageStore.from_config(config)
        ref = store.store_file(info.path, alias=args.store)
        doc["initramfs"] = {"id": ref.id, "alias": ref.alias}
        text.append(f"stored as initramfs {ref.id} (alias {ref.alias})")
        if kernel is not None:
            kref = store.store_file(kernel.vmlinuz, alias=f"{args.store}-vmlinuz")
            doc["kernel"] = {"id": kref.id, "alias": kref.alias, "release": kernel.release}
            text.append(f"stored kernel {kernel.release} as {kref.id} (alias {kref.alias})")
    _print(args, doc, "\n".join(text))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = group_verbs(subparsers, "images")
    p = add_command(
        verbs, "import", _import, "import a directory, tar or docker-save tarball as a new version"
    )
    p.add_argument("name")
    p.add_argument("source", help="directory, tar archive (gz/bz2/xz/zst) or docker-save tarball")
    p.add_argument(
        "--version", dest="version", default="", help="version name (default: next number)"
    )
    p = add_command(verbs, "versions", _versions, "list the versions in this head's image store")
    p.add_argument("name", nargs="?", default="")
    p = add_command(
        verbs, "verify", _verify, "re-check every chunk; corrupt ones are quarantined (exit 1)"
    )
    p.add_argument("name", nargs="?", default="")
    p = add_command(
        verbs, "rollback", _rollback, "make an older version the latest (default: the one before)"
    )
    p.add_argument("name")
    p.add_argument("version", nargs="?", default="")
    p = add_command(verbs, "remove", _remove, "unpublish one version (gc frees its chunks)")
    p.add_argument("name")
    p.add_argument("version")
    p = add_command(verbs, "gc", _gc, "delete chunks no version names and dead imports' leftovers")
    p.add_argument(
        "--files", action="store_true", help="also delete kernels/initramfs files without an alias"
    )
    p = add_command(verbs, "add-file", _add_file, "store a kernel or initramfs (content-addressed)")
    p.add_argument("path")
    p.add_argument("--alias", default="", help="a name boot configs can use instead of the id")

    initramfs = add_group(subparsers, "initramfs", "cwboot's initramfs (mount_rootfs)")
    p = add_command(
        initramfs, "build", _initramfs_build, "build the initramfs from distribution packages"
    )
    p.add_argument("--out", default="initramfs-cwboot.gz")
    p.add_argument(
        "--kernel-package",
        nargs="?",
        const="linux-image-amd64",
        default="",
        help="apt-get download this kernel package for its modules (default linux-image-amd64)",
    )
    p.add_argument(
        "--modules-dir", default=None, help="a lib/modules/<release> folder to take modules from"
    )
    p.add_argument(
        "--modules",
        default="",
        help=f"comma-separated modules (default {','.join(DEFAULT_MODULES)})",
    )
    p.add_argument("--cache", default="", help="download cache for --kernel-package")
    p.add_argument("--compression", choices=("gzip", "zstd"), default="gzip")
    p.add_argument(
        "--store",
        default="",
        metavar="ALIAS",
        help="also store it (and the kernel) in the image store under ALIAS",
    )
