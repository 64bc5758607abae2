"""Fixtures shared by the whole suite: a real PostgreSQL and per-test databases.

The server is the one ``OMR_TEST_DSN`` names (a libpq URL of a role that may
create databases), otherwise an embedded server this run starts in a
temporary folder and stops at the end. Every database a run creates carries
the run's id in its name, so parallel runs on one server never collide.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Set before anything imports Qt: the tests never open a real screen.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import psycopg  # noqa: E402
import pytest  # noqa: E402
from psycopg import sql  # noqa: E402

from omr_desktop.db.embedded import EmbeddedServer  # noqa: E402
from omr_desktop.db.migrate import migrate  # noqa: E402

RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"
_database_numbers = itertools.count(1)


def make_base_dir(prefix: str) -> Path:
    """Create a temporary folder the embedded server's account can enter.

    mkdtemp makes mode 0700 folders; as root the server runs as another
    user, who must be able to search the folder to reach its data folder.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


@pytest.fixture(scope="session")
def pg_admin_conninfo() -> Iterator[str]:
    """Return a connection string to a maintenance database of the test server."""
    dsn = os.environ.get("OMR_TEST_DSN")
    if dsn:
        yield dsn
        return
    base = make_base_dir("omr-test-pg-")
    server = EmbeddedServer(base / "data")
    server.start()
    try:
        yield server.conninfo("postgres")
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def with_dbname(conninfo: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def create_database(admin: str, name: str, template: str | None = None) -> None:
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(query)


def drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )


@pytest.fixture(scope="session")
def template_database(pg_admin_conninfo: str) -> Iterator[str]:
    """Return the name of a migrated database that test databases are cloned from."""
    name = f"omr_test_tpl_{RUN_ID}"
    create_database(pg_admin_conninfo, name)
    with psycopg.connect(with_dbname(pg_admin_conninfo, name), autocommit=True) as c:
        migrate(c)
    try:
        yield name
    finally:
        drop_database(pg_admin_conninfo, name)


@pytest.fixture
def db_conninfo(pg_admin_conninfo: str, template_database: str) -> Iterator[str]:
    """Return a connection string to a fresh migrated database of this test's own.

    The test may commit: the database is dropped afterwards.
    """
    name = f"omr_test_{RUN_ID}_{next(_database_numbers)}"
    create_database(pg_admin_conninfo, name, template=template_database)
    try:
        yield with_dbname(pg_admin_conninfo, name)
    finally:
        drop_database(pg_admin_conninfo, name)


@pytest.fixture
def empty_db_conninfo(pg_admin_conninfo: str) -> Iterator[str]:
    """Return a connection string to a fresh database with no schema at all."""
    name = f"omr_test_{RUN_ID}_{next(_database_numbers)}_empty"
    create_database(pg_admin_conninfo, name)
    try:
        yield with_dbname(pg_admin_conninfo, name)
    finally:
        drop_database(pg_admin_conninfo, name)


@pytest.fixture
def db(db_conninfo: str) -> Iterator[psycopg.Connection]:
    """Return an autocommit connection to this test's own migrated database."""
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture(autouse=True)
def _close_app_log_handlers() -> Iterator[None]:
    """Close the log handlers a command run added, so no test leaks a file."""
    yield
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "omr_desktop_handler", False):
            root.removeHandler(handler)
            handler.close()
