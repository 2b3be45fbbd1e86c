# `neurogrid keys ...` and `neurogrid nodes ...`: API keys for clients and tokens
# for workers, in the same database the server uses (the server may be running:
# the store takes concurrent writers from several processes).
#
#   neurogrid keys create --tier beta|premium [--name N] [--per-hour N] [--in-flight N]
#   neurogrid keys list | neurogrid keys revoke KEY_ID
#   neurogrid nodes create --name NAME | neurogrid nodes list | neurogrid nodes revoke NAME
#
# The database: --db, else $NEUROGRID_DB, else ./neurogrid.db, as `neurogrid serve`
# (database.py); the command says which file it used, and refuses to create a new
# one at the default location unless --create.
#
# Rules: a secret is printed once, when created, and only its hash is stored; a
# worker token's name becomes its node id (`node_<name>`), so names are short slugs.
from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Awaitable, Callable

import trio

from .access import DEFAULT_TIERS
from .database import DB_ENV, DEFAULT_DB, choose_database
from .store import Store, StoreError, open_store
from .views import iso

NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def node_name(text: str) -> str:
    if not NODE_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 1-40 lower-case letters, digits and '-' (it becomes node_<name>)")
    return text


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurogrid", description="API keys and worker tokens")
    parser.add_argument("--db", default=None,
                        help=f"a SQLite file path or store URL (default: ${DB_ENV}, else "
                             f"./{DEFAULT_DB}); the server's database")
    parser.add_argument("--create", action="store_true",
                        help=f"create the database at the default ./{DEFAULT_DB} should "
                             "it not exist (otherwise refused: it would not be the server's)")
    groups = parser.add_subparsers(dest="group", required=True)

    keys = groups.add_parser("keys", help="API keys for clients").add_subparsers(
        dest="action", required=True)
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--tier", choices=sorted(DEFAULT_TIERS), required=True)
    create.add_argument("--name", default="", help="who the key is for")
    create.add_argument("--per-hour", type=positive, help="own hourly submission limit")
    create.add_argument("--in-flight", type=positive, help="own limit of tasks in flight")
    keys.add_parser("list", help="list keys (never their secrets)")
    revoke = keys.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")

    nodes = groups.add_parser("nodes", help="tokens for workers").add_subparsers(
        dest="action", required=True)
    create = nodes.add_parser("create", help="create (or replace) a worker token")
    create.add_argument("--name", type=node_name, required=True)
    nodes.add_parser("list", help="list worker tokens (never the tokens)")
    revoke = nodes.add_parser("revoke", help="revoke a worker token")
    revoke.add_argument("name")
    for sub in (keys, nodes):  # --db also after the action, where people type it
        for action in sub.choices.values():
            action.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            action.add_argument("--create", action="store_true", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
    return parser


async def keys_create(store: Store, args: argparse.Namespace) -> int:
    secret, record = await store.create_key(args.tier, args.name, args.per_hour,
                                            args.in_flight, time.time())
    tier = DEFAULT_TIERS[record.tier]
    print(f"API key {record.id} ({record.tier}: {record.per_hour or tier.per_hour}/hour, "
          f"{record.in_flight or tier.in_flight} in flight)")
    print(secret)
    print("Store it now: only its hash is kept. Use it as 'Authorization: Bearer <key>'.",
          file=sys.stderr)
    return 0


async def keys_list(store: Store, args: argparse.Namespace) -> int:
    for key in await store.list_keys():
        state = f"revoked {iso(key.revoked_at)}" if key.revoked_at else "active"
        limits = f"{key.per_hour or DEFAULT_TIERS[key.tier].per_hour}/h"
        print(f"{key.id}  {key.tier:<8} {limits:<8} {state:<28} {iso(key.created_at)}  {key.name}")
    return 0


async def keys_revoke(store: Store, args: argparse.Namespace) -> int:
    if await store.revoke_key(args.key_id, time.time()):
        print(f"revoked {args.key_id}")
        return 0
    print(f"no active key {args.key_id!r}", file=sys.stderr)
    return 1


async def nodes_create(store: Store, args: argparse.Namespace) -> int:
    token = await store.create_node_token(args.name, time.time())
    print(f"worker token for node_{args.name} (any earlier token of this name stops working):")
    print(token)
    print(f"run: neurogrid worker --coordinator ws://HOST:PORT/api/nodes/connect --token {token}"
          "\n(it serves every model this machine has weights for; --model NAME=DIR serves "
          "your own export)", file=sys.stderr)
    return 0


async def nodes_list(store: Store, args: argparse.Namespace) -> int:
    for token in await store.list_node_tokens():
        state = f"revoked {iso(token.revoked_at)}" if token.revoked_at else "active"
        print(f"node_{token.name:<30} {state:<28} created {iso(token.created_at)}")
    return 0


async def nodes_revoke(store: Store, args: argparse.Namespace) -> int:
    if await store.revoke_node_token(args.name, time.time()):
        print(f"revoked the token of node_{args.name}")
        return 0
    print(f"no active token named {args.name!r}", file=sys.stderr)
    return 1


ACTIONS: dict[tuple[str, str], Callable[[Store, argparse.Namespace], Awaitable[int]]] = {
    ("keys", "create"): keys_create, ("keys", "list"): keys_list,
    ("keys", "revoke"): keys_revoke, ("nodes", "create"): nodes_create,
    ("nodes", "list"): nodes_list, ("nodes", "revoke"): nodes_revoke,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    database = choose_database(args.db)
    if not database.exists():
        if database.source == "default" and not args.create:
            print(f"neurogrid: no database at {database.describe()}. Run this where the "
                  f"server runs, name the server's database with --db PATH or {DB_ENV}=PATH, "
                  "or pass --create to start a new one here.", file=sys.stderr)
            return 2
        print(f"neurogrid: creating a new, empty database at {database.describe()}",
              file=sys.stderr)
    else:
        print(f"neurogrid: database {database.describe()}", file=sys.stderr)

    async def run() -> int:
        async with open_store(database.url) as store:
            return await ACTIONS[args.group, args.action](store, args)

    try:
        return trio.run(run)
    except StoreError as exc:
        print(f"neurogrid: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
