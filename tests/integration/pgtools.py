"""PostgreSQL helpers for tests that need a database or a pooler of their own.

``fresh_database`` creates an empty database on the shared local server (and drops it after),
for tests that assert on a whole table or restore into it. ``PgBouncer`` runs Debian's
pgbouncer in transaction mode on a free 127.0.0.1 port in front of that server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from jobstream.streams.dev.replicas import free_port
from jobstream.streams.polling import wait_until
from tests.conftest import IN_CI


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def with_port(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{userinfo}127.0.0.1:{port}", parts.path, parts.query, ""))


@contextlib.asynccontextmanager
async def fresh_database(dsn: str, stem: str = "t") -> AsyncIterator[str]:
    """An empty database on the server of ``dsn``; its DSN, dropped on exit."""
    name = f"jobstream_{stem}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(dsn, name)
    finally:
        admin = await asyncpg.connect(with_database(dsn, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )
    if found is None:
        if IN_CI:
            pytest.fail("pgbouncer is missing under CI: run scripts/install-prereqs.sh")
        pytest.skip("pgbouncer is not installed (scripts/install-prereqs.sh installs it)")
    return found


class PgBouncer:
    """pgbouncer with ``pool_mode = transaction`` in front of the server of ``upstream``.

    The local server trusts 127.0.0.1, so pgbouncer does too (``auth_type = trust``; the user
    must still be listed in ``auth_file``). pgbouncer refuses to run as root, so as root it
    runs as the postgres user, and its files sit in a directory that user can read.
    """

    def __init__(self, upstream: str, *, pool_size: int = 20) -> None:
        parts = urlsplit(upstream)
        self.user = parts.username or "postgres"
        self.upstream_port = parts.port or 5432
        self.port = free_port()
        self.pool_size = pool_size
        self.upstream = upstream
        self.dir = Path(tempfile.mkdtemp(prefix="jobstream-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str | None = None) -> str:
        dsn = with_port(self.upstream, self.port)
        return with_database(dsn, database) if database else dsn

    def start(self) -> PgBouncer:
        binary = pgbouncer_binary()
        ini = self.dir / "pgbouncer.ini"
        users = self.dir / "userlist.txt"
        users.write_text(f'"{self.user}" ""\n')
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.upstream_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 1000\n"
            f"default_pool_size = {self.pool_size}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        os.chmod(self.dir, 0o755)
        for f in (ini, users):
            os.chmod(f, 0o644)
        cmd = [binary]
        if os.geteuid() == 0:
            cmd += ["-u", pwd.getpwnam("postgres").pw_name]
        self.log = (self.dir / "pgbouncer.log").open("wb")
        self.proc = subprocess.Popen([*cmd, str(ini)], stdout=self.log, stderr=subprocess.STDOUT)
        return self

    async def wait_ready(self, timeout: float = 20.0) -> None:
        async def answers() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log_text()
            try:
                conn = await asyncpg.connect(self.dsn(), statement_cache_size=0, timeout=2)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                return False
            await conn.close()
            return True

        await wait_until(answers, within_s=timeout, interval_s=0.1, what="pgbouncer")

    def log_text(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
