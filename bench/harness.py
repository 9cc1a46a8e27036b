"""What the benchmarks share for setting up a run: the service options, a throw-away PostgreSQL database and its
migration, and an HTTP client for the API with the sign-ups every run starts with."""
from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.report import log
from tests.e2e.harness import LOOPBACK, ROOT, VENV_BIN, child_env

DATABASE_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
PASSWORD = "bench password 1"  # noqa: S105 - a throw-away account in a throw-away database
REQUEST_TIMEOUT = 10.0


def add_service_options(parser: argparse.ArgumentParser, redis_url: str, redis_help: str | None = None) -> None:
    """`--database-server` (where the throw-away database is made) and `--redis-url` (the run's Redis DB)."""
    parser.add_argument("--database-server", default=DATABASE_SERVER,
                        help="PostgreSQL to create the throw-away database on")
    parser.add_argument("--redis-url", default=redis_url, help=redis_help)


@contextmanager
def throwaway_database(server: str, announce: str | None = "") -> Iterator[str]:
    """A fresh database `zenzefi_bench_<random>` on `server`, dropped afterwards whatever happens; yields its URL.
    Says so when it is created, followed by `announce` (None: silent)."""
    server_url = make_url(server).set(drivername="postgresql+psycopg")
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"zenzefi_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    if announce is not None:
        log(f"database {name} created on {server_url.host}:{server_url.port}{announce}")
    try:
        yield server_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        log(f"database {name} dropped")


def migrate(database_url: str, redis_url: str, revision: str = "head", instance: Path | None = None,
            timeout: float = 180) -> float:
    """`flask db upgrade <revision>` in a child process (in `instance`, else a temporary instance folder); the
    seconds it took. Exits the run when it fails."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zenzefi-bench-") as temporary:
        done = subprocess.run([str(VENV_BIN / "flask"), "--app", "wsgi", "db", "upgrade", revision], cwd=ROOT,
                              env=child_env(database_url, redis_url, instance or Path(temporary)),
                              capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"flask db upgrade {revision} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


class Client:
    """One keep-alive HTTP/1.1 connection to the server; reconnects after an error."""

    def __init__(self, port: int):
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
             ) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {**(headers or {}), **({"Content-Type": "application/json"} if payload is not None else {})}
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=REQUEST_TIMEOUT)
            try:
                self.connection.request(method, path, body=payload, headers=all_headers)
                answer = self.connection.getresponse()
                data = answer.read()
                if answer.getheader("Connection", "").lower() == "close":
                    self.close()
                return answer.status, (json.loads(data) if data else None)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: retry once on a new one (before any
                # bytes of this request were processed, so a retry cannot double-buy).
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def must(result: tuple[int, Any], expected: int, what: str) -> Any:
    status, body = result
    if status != expected:
        raise SystemExit(f"{what}: expected {expected}, got {status}: {body}")
    return body


def sign_up(client: Client, name: str) -> dict[str, Any]:
    """Registers and signs in `name`: {"id", "headers"} (the bearer token's)."""
    email = f"{name}@bench.example.com"
    user = must(client.call("POST", "/api/v1/auth/register",
                            {"email": email, "username": name, "password": PASSWORD}), 201, f"register {name}")
    tokens = must(client.call("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD}), 200,
                  f"login {name}")
    return {"id": user["id"], "headers": {"Authorization": f"Bearer {tokens['access_token']}"}}


def sign_up_superuser(client: Client, database_url: str, name: str) -> dict[str, Any]:
    """`sign_up`, then made a superuser in the database (the API makes none)."""
    admin = sign_up(client, name)
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE users SET is_superuser = true WHERE id = :id"),
                           {"id": uuid.UUID(admin["id"])})
    engine.dispose()  # the JWT stays valid: the superuser flag is read from the user row per request
    return admin
