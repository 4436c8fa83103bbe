"""The `stateroom` command line (SPEC §11).

`serve` replaces this process with the supervisor (`python -m stateroom.supervisor`)
so the CLI itself never imports the runtime; client commands talk HTTP through the
SDK client. Errors print one clear line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

import trio

from ._billing import BILLING_FIGURES
from ._client import connect, default_token, default_url
from ._ids import is_id_string


def _die(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=None, help="runtime URL (default $STATEROOM_URL or http://127.0.0.1:8787)"
    )
    p.add_argument(
        "--token", default=None, help="admin token (default $STATEROOM_TOKEN or DATA/token)"
    )
    p.add_argument(
        "--data", default=None, help="data folder whose token file to use (default ./.stateroom)"
    )


def _conn_args(args: argparse.Namespace) -> tuple[str, str | None]:
    url = args.url or default_url()
    token = args.token or default_token(args.data)
    return url, token


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r} (use 90s, 15m, 1h, 7d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


async def _with_client(args: argparse.Namespace, fn: Any) -> Any:
    url, token = _conn_args(args)
    async with connect(url, token) as client:
        return await fn(client)


def _resolve_object(client: Any, binding: str, name_or_id: str | None, name: str | None) -> str:
    ns = client.namespace(binding)
    if name is not None:
        return str(ns.id_from_name(name))
    assert name_or_id is not None
    if is_id_string(name_or_id):
        return str(ns.id_from_string(name_or_id))
    return str(ns.id_from_name(name_or_id))


def cmd_deploy(args: argparse.Namespace) -> None:
    config = args.config or "stateroom.toml"

    async def go(client: Any) -> Any:
        return await client.deploy(config, dry_run=args.dry_run)

    result = trio.run(_with_client, args, go)
    if args.dry_run:
        plan = result["plan"]
        print("dry run: nothing was changed")
        if result.get("version") is not None:
            print(f"  would deploy version {result['version']} (the code loaded in a worker)")
        print(f"  migrations to apply: {', '.join(plan['apply']) or 'none'}")
        for c in plan["create"]:
            print(f"  create class {c}")
        for a, b in plan["rename"]:
            print(f"  rename class {a} -> {b} (ids and data kept)")
        for c in plan["delete"]:
            print(f"  delete class {c} and all its objects")
        print(
            f"  bindings: {', '.join(f'{b}={c}' for b, c in result['bindings'].items()) or 'none'}"
        )
    else:
        print(
            f"deployed version {result['version']}"
            + (f" (migrations: {', '.join(result['applied'])})" if result["applied"] else "")
        )


def cmd_deployments(args: argparse.Namespace) -> None:
    import datetime as dt

    rows = trio.run(_with_client, args, lambda c: c.deployments())
    if args.json:
        print(json.dumps({"deployments": rows}, indent=2))
        return
    print(f"{'version':>7}  {'created':19}  {'bindings':30}  note")
    for d in rows:
        created = dt.datetime.fromtimestamp(d["created"]).strftime("%Y-%m-%d %H:%M:%S")
        mark = "*" if d["current"] else " "
        bindings = ",".join(f"{b}={c}" for b, c in d["bindings"].items())
        print(f"{d['version']:>6}{mark}  {created}  {bindings:30}  {d['note']}")


def cmd_rollback(args: argparse.Namespace) -> None:
    result = trio.run(_with_client, args, lambda c: c.rollback(args.version))
    print(
        f"rolled back to the code of version {result['rolled_back_to']} (now version {result['version']})"
    )


def cmd_objects(args: argparse.Namespace) -> None:
    upload: bytes | None = None
    if args.action == "import":
        try:
            with open(args.file, "rb") as f:
                upload = f.read()
        except OSError as exc:
            _die(f"cannot read {args.file}: {exc.strerror or exc}")

    async def go(client: Any) -> Any:
        if args.action == "list":
            return await client.objects(args.binding)
        oid = _resolve_object(client, args.binding, args.name_or_id, args.name)
        if args.action == "delete":
            await client.delete_object(args.binding, oid)
            return oid
        if args.action == "export":
            return oid, await client.export_object(args.binding, oid)
        assert upload is not None
        await client.import_object(args.binding, oid, upload)
        return oid

    result = trio.run(_with_client, args, go)
    if args.action == "list":
        if args.json:
            print(json.dumps({"objects": result}, indent=2))
            return
        print(f"{'id':64}  {'name':24}  {'bytes':>10}")
        for o in result:
            print(f"{o['id']:64}  {str(o['name'] or '-'):24}  {o['bytes']:>10}")
    elif args.action == "delete":
        print(f"deleted {result}")
    elif args.action == "export":
        oid, data = result
        try:
            with open(args.file, "wb") as out:
                out.write(data)
        except OSError as exc:
            _die(f"cannot write {args.file}: {exc.strerror or exc}")
        print(f"exported {oid} to {args.file} ({len(data)} bytes)")
    else:
        print(f"imported {args.file} into {result}")


def cmd_billing(args: argparse.Namespace) -> None:
    async def go(client: Any) -> Any:
        return await client.billing(since=args.since, until=args.until, group_by=args.group_by)

    doc = trio.run(_with_client, args, go)
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"billing since {doc['since']} (by {doc['group_by']})")
    cols = ["class", "object", "name", *BILLING_FIGURES]
    for c in cols:
        table.add_column(c, justify="right" if c not in ("class", "object", "name") else "left")
    for g in doc["groups"] + [
        dict(doc["total"], **{"class": "TOTAL", "object": None, "name": None})
    ]:
        table.add_row(*[_fmt(g.get(c)) for c in cols])
    Console().print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, str) and len(v) == 64:
        return v[:12] + "…"
    return str(v)


def cmd_top(args: argparse.Namespace) -> None:
    from ._top import run_top

    url, token = _conn_args(args)
    run_top(url, token, interval=args.interval, once=args.once)


def _object_positionals(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]
) -> None:
    """Assign NAME_OR_ID and FILE of `objects delete|export|import`.

    argparse stops filling positionals at the first option, so `export B --name N
    FILE` leaves FILE among the unknown arguments; take positionals in order.
    """
    if any(e.startswith("-") for e in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    pos = [p for p in (args.name_or_id, getattr(args, "file", None)) if p is not None] + extra
    if args.name is None:
        if not pos:
            parser.error(f"objects {args.action}: give NAME_OR_ID or --name NAME")
        args.name_or_id = pos.pop(0)
    else:
        args.name_or_id = None
    if args.action != "delete":
        if not pos:
            parser.error(f"objects {args.action}: FILE is required")
        args.file = pos.pop(0)
    if pos:
        parser.error(f"unrecognized arguments: {' '.join(pos)}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        os.execv(sys.executable, [sys.executable, "-m", "stateroom.supervisor", *argv[1:]])
    if argv and argv[0] == "dev":
        from ._dev import main as dev_main

        dev_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="stateroom", description="Durable Objects for Python")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the runtime (see `stateroom serve --help`)")
    sub.add_parser("dev", help="serve + deploy + redeploy on file change")

    p = sub.add_parser("deploy", help="deploy an app")
    p.add_argument("config", nargs="?", default=None)
    p.add_argument("--dry-run", action="store_true")
    _client_flags(p)
    p.set_defaults(fn=cmd_deploy)

    p = sub.add_parser("deployments", help="deployment history")
    p.add_argument("action", choices=["list"])
    p.add_argument("--json", action="store_true")
    _client_flags(p)
    p.set_defaults(fn=cmd_deployments)

    p = sub.add_parser("rollback", help="redeploy earlier code")
    p.add_argument("version", nargs="?", type=int, default=None)
    _client_flags(p)
    p.set_defaults(fn=cmd_rollback)

    p = sub.add_parser("top", help="live per-process view")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    _client_flags(p)
    p.set_defaults(fn=cmd_top)

    p = sub.add_parser("billing", help="usage and cost")
    p.add_argument("--since", default=None)
    p.add_argument("--until", default=None)
    p.add_argument("--group-by", default="class", choices=["class", "object"])
    p.add_argument("--json", action="store_true")
    _client_flags(p)
    p.set_defaults(fn=cmd_billing)

    p = sub.add_parser("objects", help="list, delete, export, import objects")
    osub = p.add_subparsers(dest="action", required=True)
    q = osub.add_parser("list")
    q.add_argument("binding")
    q.add_argument("--json", action="store_true")
    _client_flags(q)
    for action in ("delete", "export", "import"):
        q = osub.add_parser(action)
        q.add_argument("binding")
        q.add_argument("name_or_id", nargs="?", default=None, metavar="NAME_OR_ID")
        if action != "delete":
            q.add_argument("file", nargs="?", default=None, metavar="FILE")
        q.add_argument("--name", default=None, help="the object's name (instead of NAME_OR_ID)")
        _client_flags(q)
    p.set_defaults(fn=cmd_objects)

    args, extra = parser.parse_known_args(argv)
    if args.command == "objects" and args.action != "list":
        _object_positionals(parser, args, extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.fn(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except PermissionError as exc:
        _die(f"not authorized: {exc}")
    except Exception as exc:  # noqa: BLE001 - one clear line, non-zero exit
        msg = str(exc).strip().splitlines()
        _die(
            f"{type(exc).__name__}: {msg[0] if msg else ''}" + (" …" if len(msg) > 1 else "")
            if not hasattr(exc, "exceptions")
            else str(exc)
        )


if __name__ == "__main__":
    main()
