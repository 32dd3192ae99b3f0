"""The verbs shared by every object command: ``ls``, ``show``, ``add``, ``update``, ``rm``.

A kind's command module describes itself with an ``ObjectCommands`` (kind,
columns, the ``--options`` that map to fields) and calls
``register_object_commands``; the returned verbs subparsers take more verbs.

Fields are set with options (``--boot-config compute``) or with
``FIELD=VALUE`` words for any field of the kind (``cmdline="console=ttyS0"``).
A value is read the way the field's type needs it: integers as numbers, lists
split on commas/semicolons/spaces (``mac=52:54:00:00:00:01,52:54:00:00:00:02``),
string maps as ``k=v,k2=v2``, free-form fields as JSON.
References (``REF``) are names, uids or node ranges such as ``n[0-99]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cwboot.cli.client import ApiClient, api_client
from cwboot.cli.command import CliError, add_command, add_group
from cwboot.cli.noderange import NodeRangeError, expand_all, fold_names, natural_key
from cwboot.cli.table import Column, emit, print_fields, print_json
from cwboot.control import objects

_LIST_SPLIT = re.compile(r"[,;\s]+")


def _checker(kind: str, name: str) -> str:
    return objects.fields_of(kind)[name].check.__qualname__.split(".")[0]


def field_value(kind: str, name: str, text: str) -> Any:
    """The JSON value of field ``name`` of ``kind`` written as ``text`` on a command line or in CSV."""
    spec = objects.fields_of(kind)
    if name not in spec:
        raise CliError(f"unknown field '{name}' for {kind}: expected one of {', '.join(spec)}")
    checker = _checker(kind, name)
    if checker == "_int":
        try:
            return int(text)
        except ValueError:
            raise CliError(f"field '{name}': {text!r} is not an integer") from None
    if checker in ("_macs", "_str_list"):
        return [item for item in _LIST_SPLIT.split(text.strip()) if item]
    if checker == "_str_dict":
        out: dict[str, str] = {}
        for item in re.split(r"[,;]", text):
            if not item.strip():
                continue
            key, eq, value = item.partition("=")
            if not eq:
                raise CliError(f"field '{name}': expected key=value pairs, got {item!r}")
            out[key.strip()] = value.strip()
        return out
    if checker == "_json":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def parse_assignments(kind: str, words: Sequence[str]) -> dict[str, Any]:
    """``["boot_config=compute", "groups=a,b"]`` -> ``{"boot_config": "compute", "groups": ["a", "b"]}``."""
    doc: dict[str, Any] = {}
    for word in words:
        name, eq, text = word.partition("=")
        if not eq or not name:
            raise CliError(f"expected FIELD=VALUE, got {word!r}")
        doc[name] = field_value(kind, name, text)
    return doc


def expand_refs(words: Sequence[str]) -> list[str]:
    """Names, uids and node ranges -> the list of references."""
    try:
        return expand_all(words)
    except NodeRangeError as exc:
        raise CliError(str(exc)) from None


@dataclass(frozen=True)
class FieldOption:
    """``--flag VALUE`` setting one field; ``repeat`` collects several into a list or map field."""

    flag: str
    field: str
    help: str
    repeat: bool = False
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return "field_" + self.field


@dataclass(frozen=True)
class ObjectCommands:
    """How one kind appears on the command line."""

    kind: str
    command: str
    help: str
    columns: tuple[Column, ...]
    options: tuple[FieldOption, ...] = ()
    verbs: tuple[str, ...] = ("ls", "show", "add", "update", "rm")
    # Fills derived values (e.g. a node's IP from its pool) into rows before a table is printed.
    enrich: Callable[[ApiClient, list[dict[str, Any]]], None] | None = None
    examples: str = ""

    def add_field_options(self, parser: argparse.ArgumentParser) -> None:
        for opt in self.options:
            if opt.repeat:
                parser.add_argument(opt.flag, dest=opt.dest, action="append", metavar=opt.metavar or opt.field.upper(), help=opt.help + " (repeatable)")
            else:
                parser.add_argument(opt.flag, dest=opt.dest, metavar=opt.metavar or opt.field.upper(), help=opt.help)

    def fields_from_options(self, args: argparse.Namespace) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for opt in self.options:
            given = getattr(args, opt.dest, None)
            if given is None:
                continue
            if not opt.repeat:
                doc[opt.field] = field_value(self.kind, opt.field, given)
                continue
            values = [field_value(self.kind, opt.field, text) for text in given]
            if all(isinstance(v, dict) for v in values):
                doc[opt.field] = {k: v for d in values for k, v in d.items()}
            else:
                doc[opt.field] = [x for v in values for x in (v if isinstance(v, list) else [v])]
        return doc

    def print_rows(self, args: argparse.Namespace, client: ApiClient, rows: list[dict[str, Any]]) -> None:
        if self.enrich is not None and not args.json:
            self.enrich(client, rows)
        emit(args, rows, self.columns)


def _sorted_by_name(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda d: natural_key(str(d.get("name", ""))))


def _ls(spec: ObjectCommands, args: argparse.Namespace) -> int:
    filters: dict[str, str] = {}
    for word in args.filter or []:
        name, eq, text = word.partition("=")
        if not eq:
            raise CliError(f"--filter: expected FIELD=VALUE, got {word!r}")
        filters[name] = text
    with api_client(args) as client:
        rows = client.list_objects(spec.kind, filters or None)
        if args.refs:
            wanted = set(expand_refs(args.refs))
            rows = [d for d in rows if d.get("name") in wanted or d.get("uid") in wanted]
        spec.print_rows(args, client, _sorted_by_name(rows))
    return 0


def _show(spec: ObjectCommands, args: argparse.Namespace) -> int:
    refs = expand_refs(args.refs)
    with api_client(args) as client:
        docs = [client.get_object(spec.kind, ref) for ref in refs]
        if args.json:
            print_json(docs[0] if len(args.refs) == 1 and len(refs) == 1 else docs)
            return 0
        if spec.enrich is not None:
            spec.enrich(client, docs)
    for i, doc in enumerate(docs):
        if i:
            sys.stdout.write("\n")
        print_fields(doc)
    return 0


def _add(spec: ObjectCommands, args: argparse.Namespace) -> int:
    doc = {"name": args.name, **parse_assignments(spec.kind, args.assignments), **spec.fields_from_options(args)}
    with api_client(args) as client:
        created = client.create_object(spec.kind, doc)
        if args.json:
            print_json(created)
        else:
            spec.print_rows(args, client, [created])
    return 0


def _update(spec: ObjectCommands, args: argparse.Namespace) -> int:
    assignments = [w for w in args.words if "=" in w]
    refs = expand_refs([w for w in args.words if "=" not in w])
    patch = {**parse_assignments(spec.kind, assignments), **spec.fields_from_options(args)}
    if not refs:
        raise CliError("name at least one object to update")
    if not patch:
        raise CliError("nothing to change: give FIELD=VALUE or options (see --help)")
    with api_client(args) as client:
        changed = [client.update_object(spec.kind, ref, patch) for ref in refs]
    if args.json:
        print_json(changed)
    else:
        print(f"updated {len(changed)} {spec.kind}: {fold_names(d['name'] for d in changed)}")
    return 0


def _rm(spec: ObjectCommands, args: argparse.Namespace) -> int:
    refs = expand_refs(args.refs)
    with api_client(args) as client:
        for ref in refs:
            client.delete_object(spec.kind, ref)
    print(f"removed {len(refs)} {spec.kind}: {fold_names(refs)}")
    return 0


def register_object_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], spec: ObjectCommands
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``cwboot <spec.command> <verb>`` for each of spec.verbs; returns the verbs' subparsers."""
    verbs = add_group(subparsers, spec.command, spec.help, f"{spec.help}\n\n{spec.examples}".strip())
    fields = ", ".join(objects.fields_of(spec.kind))
    if "ls" in spec.verbs:
        p = add_command(
            verbs, "ls", lambda a: _ls(spec, a), f"list {spec.kind} objects",
            epilog=f"fields: {fields}",
        )
        p.add_argument("refs", nargs="*", metavar="REF", help="only these names/uids/ranges, e.g. n[0-9]")
        p.add_argument("--filter", action="append", metavar="FIELD=VALUE", help="only objects whose FIELD matches (server-side; repeatable)")
    if "show" in spec.verbs:
        p = add_command(verbs, "show", lambda a: _show(spec, a), f"show {spec.kind} objects in full")
        p.add_argument("refs", nargs="+", metavar="REF", help="names, uids or ranges like n[0-3,7]")
    if "add" in spec.verbs:
        p = add_command(
            verbs, "add", lambda a: _add(spec, a), f"create a {spec.kind}",
            epilog=f"FIELD may be any of: {fields}",
        )
        p.add_argument("name", help=f"name of the new {spec.kind}")
        p.add_argument("assignments", nargs="*", metavar="FIELD=VALUE", help="more fields")
        p.set_defaults(words_dest="assignments")
        spec.add_field_options(p)
    if "update" in spec.verbs:
        p = add_command(
            verbs, "update", lambda a: _update(spec, a), f"change fields of {spec.kind} objects",
            epilog=f"FIELD may be any of: {fields}",
        )
        p.add_argument("words", nargs="+", metavar="REF|FIELD=VALUE", help="objects to change (names, uids, ranges) and FIELD=VALUE changes")
        p.set_defaults(words_dest="words")
        spec.add_field_options(p)
    if "rm" in spec.verbs:
        p = add_command(verbs, "rm", lambda a: _rm(spec, a), f"remove {spec.kind} objects")
        p.add_argument("refs", nargs="+", metavar="REF", help="names, uids or ranges like n[0-99]")
    return verbs
