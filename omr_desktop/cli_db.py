"""The ``omr-desktop db`` commands: migrate, status, backup, restore, use."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from omr_desktop import config
from omr_desktop.db.database import Database, safe_location
from omr_desktop.db.migrate import check_schema, migrate
from omr_desktop.plural import counted


def add_db_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``db`` and its subcommands on the top-level parser."""
    db = commands.add_parser("db", help="manage the database in use")
    db.set_defaults(handler=lambda _args: _usage(db))
    sub = db.add_subparsers(title="db commands", metavar="DB_COMMAND")

    cmd = sub.add_parser("migrate", help="apply pending schema migrations")
    cmd.set_defaults(handler=run_migrate)

    cmd = sub.add_parser(
        "status", help="show which database is in use, its schema version and rows"
    )
    cmd.set_defaults(handler=run_status)

    cmd = sub.add_parser("backup", help="write a backup archive (pg_dump) to FILE")
    cmd.add_argument("file", type=Path, metavar="FILE")
    cmd.set_defaults(handler=run_backup)

    cmd = sub.add_parser(
        "restore",
        help="replace the database's contents with the backup FILE (all or nothing)",
    )
    cmd.add_argument("file", type=Path, metavar="FILE")
    cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    cmd.set_defaults(handler=run_restore)

    cmd = sub.add_parser(
        "prune-history",
        help="delete the undo history of all but the newest N reprocess tasks",
        description="Delete the undo history (the answers and sheets as they "
        "were before each task) of every finished reprocess task except the "
        "newest N, to reclaim space. Pruned tasks can no longer be undone; "
        "their task rows and progress events are kept.",
    )
    cmd.add_argument(
        "--keep",
        type=int,
        required=True,
        metavar="N",
        help="number of finished tasks, newest first, whose history is kept; "
        "0 deletes all history",
    )
    cmd.set_defaults(handler=run_prune_history)

    cmd = sub.add_parser(
        "use",
        help="save which database to use: a PostgreSQL URL, or 'embedded'",
    )
    cmd.add_argument("target", metavar="URL|embedded")
    cmd.set_defaults(handler=run_use)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_migrate(args: argparse.Namespace) -> int:
    database = Database()
    database.open(apply_migrations=False)
    try:
        with database.connect(autocommit=True) as conn:
            applied = migrate(conn)
            version = check_schema(conn)
    finally:
        database.close()
    if applied:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        print(f"Applied {counted(len(applied), 'migration')}: {names}.")
    else:
        print("Nothing to apply.")
    print(f"Schema version {version} ({database.location().describe()}).")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from omr_desktop.db.status import collect_status, format_status

    database = Database()
    database.open(apply_migrations=False)
    try:
        print(format_status(collect_status(database)))
    finally:
        database.close()
    return 0


def run_backup(args: argparse.Namespace) -> int:
    from omr_desktop.db.backup import backup

    database = Database()
    database.open()
    try:
        size = backup(database, args.file)
    finally:
        database.close()
    print(f"Backup written to {args.file.resolve()} ({size:,} bytes).")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from omr_desktop.db.backup import restore

    database = Database()
    database.open(apply_migrations=False)
    try:
        where = database.location().describe()
        if not args.yes and not _confirm(
            f"Replace everything in {where} with {args.file}? [y/N] "
        ):
            print("Nothing changed.")
            return 1
        restore(database, args.file)
        with database.connect(autocommit=True) as conn:
            applied = migrate(conn)
    finally:
        database.close()
    print(f"Restored {where} from {args.file}.")
    if applied:
        print(f"Then applied {counted(len(applied), 'newer migration')}.")
    return 0


def _confirm(prompt: str) -> bool:
    try:
        return input(prompt).strip().lower() in {"y", "yes"}
    except EOFError:
        return False


def run_prune_history(args: argparse.Namespace) -> int:
    from omr_desktop.db.history_store import prune_history

    if args.keep < 0:
        print(f"error: --keep must be 0 or more, not {args.keep}.", file=sys.stderr)
        return 2
    with Database() as database, database.connect() as conn:
        tasks, rows = prune_history(conn, args.keep)
    print(
        f"Pruned the history of {counted(tasks, 'task')} "
        f"({counted(rows, 'row')}); kept the newest {args.keep}."
    )
    return 0


def run_use(args: argparse.Namespace) -> int:
    target = args.target.strip()
    if target == "embedded":
        config.save_setting("database_url", None)
        print("Saved: the embedded database will be used.")
        return 0
    try:
        location = safe_location(target, "external", "settings")
    except psycopg.ProgrammingError as exc:
        print(
            f"error: {target!r} is not a PostgreSQL connection URL ({exc}). "
            "Use postgresql://user@host:port/dbname or 'embedded'."
        )
        return 2
    config.save_setting("database_url", target)
    print(f"Saved: {location.describe()} will be used.")
    if config.database_choice().source == "environment":
        print("Note: OMR_DATABASE_URL is set and takes precedence over this setting.")
    return 0
