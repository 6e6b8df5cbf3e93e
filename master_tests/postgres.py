"""A private PostgreSQL server for the multi-master tests, shared by a pytest session.

``scripts/postgresql`` runs it in a temporary directory on a free 127.0.0.1 port (no unix
socket; as the ``postgres`` system user when the tests run as root) and stops it at the
end of the session.  Each deployment of masters gets a database of its own
(:meth:`Server.create_database`), dropped when it is done, so tests (and pytest-xdist
workers, each with its own server) never see each other's data.

Needs Debian's PostgreSQL server (scripts/install-system-deps) and psycopg 3 (the
``test`` extra).  Without the server the tests skip with a clear message, or fail when
``CI`` or ``MSGPROTO_REQUIRE_SYSTEM_DEPS`` is set (scripts/run-tests sets the latter)::

    from master_tests.postgres import postgres_server  # noqa: F401  (the fixture)

    def test_x(postgres_server):
        url = postgres_server.create_database()
"""

from __future__ import annotations

import glob
import os
import secrets

from master_tests import services

#: the database that always exists (administrative connections)
ADMIN_DB = "postgres"
#: the superuser scripts/postgresql creates
SUPERUSER = "msgproto"


class Server(services.ScriptService):
    """One private server (``scripts/postgresql``) with its files in ``directory``."""

    script = "postgresql"
    log_name = "postgres.log"
    pid_file = "data/postmaster.pid"

    @classmethod
    def missing(cls) -> str | None:
        pattern = os.path.join(os.environ.get("MSGPROTO_PG_BIN", "/usr/lib/postgresql/*/bin"),
                               "postgres")
        if any(os.access(path, os.X_OK) for path in glob.glob(pattern)):
            return None
        return f"the PostgreSQL server is not installed ({pattern}): run " \
               "scripts/install-system-deps as root"

    @property
    def password(self) -> str:
        with open(os.path.join(self.directory, "password"), encoding="ascii") as f:
            return f.read().strip()

    def url(self, database: str = ADMIN_DB) -> str:
        """SQLAlchemy URL of ``database`` for psycopg 3 (what c['db']['db_url'] takes)."""
        return (f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/"
                f"{database}")

    def connect(self, database: str = ADMIN_DB):
        """A psycopg connection (autocommit) to ``database``, as the superuser."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER,
                               password=self.password, dbname=database, autocommit=True,
                               connect_timeout=10)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh unique name unless given); returns its name."""
        from psycopg import sql

        name = name or f"bb_{secrets.token_hex(6)}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever still uses it."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))

    def tables(self, database: str) -> set[str]:
        """Names of the tables in ``database``'s public schema."""
        with self.connect(database) as conn:
            rows = conn.execute("SELECT table_name FROM information_schema.tables "
                                "WHERE table_schema = 'public'").fetchall()
        return {row[0] for row in rows}


shared: services.Shared[Server] = services.Shared(Server.start_private)
#: the session's server, started on first use
current = shared.current
postgres_server = shared.fixture(
    "postgres_server", "The session's private PostgreSQL server (stopped at its end).")
