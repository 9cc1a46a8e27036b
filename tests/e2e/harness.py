"""End-to-end harness: real gunicorn / RQ worker processes, TCP relays that play dead servers, an upstream.

Everything listens on 127.0.0.1. A test points the app at a `TcpRelay` instead of the shared PostgreSQL or
Redis, then stops (or hangs) the relay to make that dependency look dead without touching the real server.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REAL_SERVICES_REASON, Backends, make_backends

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
LOOPBACK = "127.0.0.1"
POLL_STEP = 0.05

# Module/class marker: skip before any fixture runs when the suite is not on real shared services.
_BACKENDS = make_backends()
real_services = pytest.mark.skipif(
    not (_BACKENDS.is_postgres and _BACKENDS.redis_url), reason=REAL_SERVICES_REASON
)


def require_real_services(backends: Backends) -> None:
    """The same rule as `real_services`, for fixtures that are handed the session's backends."""
    if not backends.is_postgres or backends.redis_url is None:
        pytest.skip(REAL_SERVICES_REASON)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, message: str | Callable[[], str],
             step: float = POLL_STEP) -> Any:
    """Poll `condition` until it returns something truthy; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(message() if callable(message) else message)
        time.sleep(step)


def counted(exposition: str, sample_name: str, **labels: str) -> float:
    """The sum of every `sample_name` series whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no output>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


class TcpRelay:
    """A TCP forwarder 127.0.0.1:<port> → target, which can die (`stop`), come back (`start`) or hang (`hang`).

    `stop()` closes the listening socket and resets every established connection (RST both ways), so
    clients see a server that died: existing connections break and new connects are refused. `start()`
    listens again on the same port. `hang()` keeps accepting but forwards nothing, on new and on
    established connections alike, like a server that stopped answering.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0):
        self.target = (target_host, target_port)
        self.port = port
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._running = threading.Event()
        self._flowing = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> TcpRelay:
        if self._running.is_set():
            raise RuntimeError("relay already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._running.set()
        self._flowing.set()
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"relay-accept-{self.port}", daemon=True)
        self._acceptor.start()
        return self

    def hang(self) -> None:
        """Keep accepting connections but never move another byte, in either direction."""
        self._flowing.clear()

    def stop(self) -> None:
        """Die: refuse new connects and reset every connection, held or forwarded."""
        if not self._running.is_set():
            return
        self._running.clear()
        self._flowing.clear()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        with self._lock:
            leftovers = list(self._sockets)
        for sock in leftovers:
            self._reset(sock)

    def __enter__(self) -> TcpRelay:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while self._running.is_set():
            readable, _, _ = select.select([listener], [], [], POLL_STEP)
            if not readable:
                continue
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            self._track(client)
            if not self._flowing.is_set():
                continue  # hung: hold the connection open, answer nothing
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                self._reset(client)
                continue
            upstream.settimeout(None)
            self._track(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                self._spawn(source, sink)

    def _spawn(self, source: socket.socket, sink: socket.socket) -> None:
        thread = threading.Thread(target=self._pump, args=(source, sink), name=f"relay-pump-{self.port}",
                                  daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while self._running.is_set():
                if not self._flowing.is_set():
                    time.sleep(POLL_STEP)  # hung: leave the bytes where they are
                    continue
                readable, _, _ = select.select([source], [], [], POLL_STEP)
                if not readable:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                while not self._flowing.is_set():  # hung while reading: hold these bytes back too
                    if not self._running.is_set():
                        return
                    time.sleep(POLL_STEP)
                sink.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            if self._running.is_set():
                # One side closed or broke: end the pair the way a proxy would, without a reset.
                self._close(source)
                self._close(sink)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            if sock not in self._sockets:
                return
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _reset(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        # Linger 0: close() sends RST, the peer sees "connection reset by peer".
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class Upstream:
    """A tiny upstream HTTP server on 127.0.0.1 that answers 200 to everything."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"upstream ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="upstream", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, seconds: float):
        self.status = status
        self.headers = headers
        self.body = body
        self.seconds = seconds

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.text[:300]!r} in {self.seconds * 1000:.1f} ms>"


class _Process:
    """A child process in its own process group, with stdout/stderr captured to files."""

    label = "process"
    _tmp: tempfile.TemporaryDirectory  # the working directory, made by each subclass before __init__

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path):
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.stdout_path = workdir / f"{self.label}.stdout.log"
        self.stderr_path = workdir / f"{self.label}.stderr.log"
        self.process: subprocess.Popen | None = None

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the process group and remove its working directory."""
        try:
            self.terminate()
        finally:
            self._tmp.cleanup()

    def spawn(self) -> None:
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=stdout, stderr=stderr,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the whole process group, wait, then SIGKILL whatever is left of it."""
        if self.process is None:
            return None
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children (gunicorn workers, RQ work horses) may outlive the leader for a moment.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(POLL_STEP)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode

    def logs(self, lines: int = 40) -> str:
        return (f"--- {self.label} stderr (tail) ---\n{tail(self.stderr_path, lines)}\n"
                f"--- {self.label} stdout (tail) ---\n{tail(self.stdout_path, lines)}")


def child_env(database_url: str | None, redis_url: str | None, instance: Path,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process under test: ours minus anything that could point it elsewhere."""
    drop_prefixes = ("TEST_", "GUNICORN_", "PROMETHEUS_", "ZENZEFI_", "HEALTH_", "METRICS_")
    drop_names = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "JWT_SECRET_KEY", "PAYMENT_WEBHOOK_SECRET",
                  "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS"}
    env = {name: value for name, value in os.environ.items()
           if name not in drop_names and not name.startswith(drop_prefixes)}
    env.update(
        ZENZEFI_ENV="testing",
        ZENZEFI_INSTANCE_PATH=str(instance),
        PASSWORD_HASH_TIME_COST="1",
        PASSWORD_HASH_MEMORY_KIB="1024",
        ZENZEFI_UPSTREAM_URL="http://127.0.0.1:9",
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra or {})
    return env


ACCESS_LOG_FORMAT = 'access %(p)s "%(m)s %(U)s" %(s)s'
ACCESS_LOG_LINE = re.compile(r'^access <(?P<pid>\d+)> "(?P<method>[A-Z]+) (?P<target>\S+)" (?P<status>\d{3})$')


class Gunicorn(_Process):
    """`gunicorn -c gunicorn.conf.py wsgi:app` on a free loopback port, 2 gthread workers by default.

        with Gunicorn(database_url, redis_url, extra_env={...}) as server:
            server.get("/health")
    """

    label = "gunicorn"

    def __init__(self, database_url: str | None, redis_url: str | None, extra_env: dict[str, str] | None = None,
                 workers: int = 2, startup_timeout: float = 30.0):
        self._tmp = tempfile.TemporaryDirectory(prefix="zenzefi-e2e-gunicorn-")
        workdir = Path(self._tmp.name)
        (workdir / "instance").mkdir()
        self.port = free_port()
        self.multiproc_dir = workdir / "prometheus"
        self.startup_timeout = startup_timeout
        self.workers = workers
        env = child_env(database_url, redis_url, workdir / "instance", {
            "GUNICORN_BIND": f"{LOOPBACK}:{self.port}",
            "GUNICORN_WORKERS": str(workers),
            "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc_dir),
            # Our own control socket (not ~/.gunicorn, shared by every gunicorn of this user) and the
            # worker's pid in the access log, so a test can tell which worker served what.
            "GUNICORN_CMD_ARGS": (f"--control-socket {workdir / 'gunicorn.ctl'} "
                                  f"--access-logformat '{ACCESS_LOG_FORMAT}'"),
            **(extra_env or {}),
        })
        super().__init__([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], env, workdir)

    def __enter__(self) -> Gunicorn:
        self.spawn()
        try:
            deadline = time.monotonic() + self.startup_timeout
            wait_for(self._live, self.startup_timeout,
                     lambda: f"gunicorn did not answer /health/live within {self.startup_timeout} s\n{self.logs()}")
            # Every worker must have booted its app, or the first seconds would all land on one of them.
            wait_for(lambda: self._live() and len(set(self.served("GET", "/health/live"))) >= self.workers,
                     max(1.0, deadline - time.monotonic()),
                     lambda: f"not all {self.workers} workers answered /health/live\n{self.logs()}")
        except BaseException:
            self.close()
            raise
        return self


    def _live(self) -> bool:
        if not self.alive():
            pytest.fail(f"gunicorn exited with {self.process.returncode}\n{self.logs()}")
        try:
            return self.get("/health/live", timeout=1).status == 200
        except OSError:
            return False

    def served(self, method: str, path: str) -> list[int]:
        """Pids of the workers that served each `method path` request so far, from the access log."""
        pids = []
        for line in tail(self.stdout_path, lines=1_000_000).splitlines():
            match = ACCESS_LOG_LINE.match(line)
            if match and match["method"] == method and match["target"].split("?")[0] == path:
                pids.append(int(match["pid"]))
        return pids

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                timeout: float = 5.0, body: bytes | None = None) -> Response:
        """One request on a fresh connection, so the kernel may hand it to either worker."""
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        started = time.perf_counter()
        try:
            connection.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
            answer = connection.getresponse()
            body = answer.read()
        finally:
            connection.close()
        return Response(answer.status, dict(answer.getheaders()), body, time.perf_counter() - started)

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> Response:
        return self.request("GET", path, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None) -> Response:
        """An API call with an optional JSON body."""
        data = None if body is None else json.dumps(body).encode()
        sent = {**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})}
        return self.request(method, path, headers=sent, timeout=10.0, body=data)

    def sign_up(self) -> dict[str, Any]:
        """Register and log in over HTTP; the user's id, e-mail and bearer headers."""
        suffix = uuid.uuid4().hex[:10]
        body = {"email": f"e2e{suffix}@example.com", "username": f"e2e_{suffix}", "password": "correct horse 1"}
        registered = self.call("POST", "/api/v1/auth/register", body)
        assert registered.status == 201, self.describe(repr(registered))
        login = self.call("POST", "/api/v1/auth/login", {"email": body["email"], "password": body["password"]})
        assert login.status == 200, self.describe(repr(login))
        return {"id": registered.json()["id"], "email": body["email"],
                "headers": {"Authorization": f"Bearer {login.json()['access_token']}"}}

    def describe(self, what: str) -> str:
        return f"{what}\n{self.logs()}"


class Worker(_Process):
    """`python -m worker [args]` against the given database and Redis."""

    label = "worker"

    def __init__(self, database_url: str | None, redis_url: str | None, args: Iterable[str] = (),
                 extra_env: dict[str, str] | None = None, name: str = "worker"):
        self.label = name
        self._tmp = tempfile.TemporaryDirectory(prefix=f"zenzefi-e2e-{name}-")
        workdir = Path(self._tmp.name)
        (workdir / "instance").mkdir()
        env = child_env(database_url, redis_url, workdir / "instance", extra_env)
        super().__init__([str(VENV_BIN / "python"), "-m", "worker", *args], env, workdir)

    def __enter__(self) -> Worker:
        self.spawn()
        return self


    def run(self, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run to completion (for invocations that are expected to exit) and give back the outcome."""
        self.spawn()
        try:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.terminate()
                pytest.fail(f"`{' '.join(self.argv[1:])}` did not exit within {timeout} s\n{self.logs()}")
            return subprocess.CompletedProcess(self.argv, self.process.returncode,
                                               self.stdout_path.read_text(errors="replace"),
                                               self.stderr_path.read_text(errors="replace"))
        finally:
            self.close()

    def describe(self, what: str) -> str:
        return f"{what}\n{self.logs()}"
