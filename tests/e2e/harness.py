"""End-to-end harness: real gunicorn / RQ worker processes, TCP relays that play dead servers, an upstream.

Everything listens on 127.0.0.1. A test points the app at a `TcpRelay` instead of the shared PostgreSQL or
Redis, then stops (or hangs) the relay to make that dependency look dead without touching the real server.
"""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.fixtures.loopback import LOOPBACK, LoopbackServer
from tests.support import REAL_SERVICES_REASON, Backends, make_backends
from zenzefi_backend.config.redis_url import parse_redis_url

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
# What the e2e tests send: the proxy's path, two device ids, and where a token is bought.
PROXY = "/api/v1/proxy"
PURCHASE = "/api/v1/tokens/purchase"
DEVICE_A = "device-alpha-0001"
DEVICE_B = "device-bravo-0002"
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


def exchange(connection: socket.socket, data: bytes,
             gone: tuple[type[BaseException], ...] = (ConnectionResetError,)) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are on an open connection; read until the server closes it (or it ends in one of
    `gone`); the status, the headers (names in lower case) and the body as received."""
    connection.sendall(data)
    received = bytearray()
    while True:
        try:
            chunk = connection.recv(65536)
        except gone:
            break
        if not chunk:
            break
        received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no output>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


class TcpRelay:
    """A TCP forwarder <listen_host>:<port> → target, which can die (`stop`), come back (`start`) or hang (`hang`).

    It listens on 127.0.0.1 unless told otherwise (the host side of a network namespace's link, for processes
    inside it to reach a service that listens on loopback only).

    `stop()` closes the listening socket and resets every established connection (RST both ways), so
    clients see a server that died: existing connections break and new connects are refused. `start()`
    listens again on the same port. `hang()` keeps accepting but forwards nothing, on new and on
    established connections alike, like a server that stopped answering.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0, listen_host: str = LOOPBACK):
        self.target = (target_host, target_port)
        self.port = port
        self.listen_host = listen_host
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._running = threading.Event()
        self._flowing = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    def start(self) -> TcpRelay:
        if self._running.is_set():
            raise RuntimeError("relay already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, self.port))
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


class Upstream(LoopbackServer):
    """A tiny upstream HTTP server on 127.0.0.1 that answers 200 to everything and remembers the paths it was
    asked for (`paths`); `/slow?seconds=S` answers after S seconds."""

    def __init__(self):
        upstream = self
        self.paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path, _, query = self.path.partition("?")
                upstream.paths.append(path)
                if path.startswith("/slow"):
                    time.sleep(float(query.removeprefix("seconds=") or 1))
                body = b"upstream ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self._handler = Handler

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Upstream:
        self._listen(self._handler, "upstream", poll_interval=0.05)
        return self


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
        # Appended: a process started again (a restart) keeps the earlier output next to its own.
        with open(self.stdout_path, "ab") as stdout, open(self.stderr_path, "ab") as stderr:
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


def timed_request(connection: http.client.HTTPConnection, method: str, path: str,
                  headers: dict[str, str] | None = None, body: bytes | None = None) -> Response:
    """One request on `connection`, its answer read whole."""
    started = time.perf_counter()
    connection.request(method, path, body=body, headers=headers or {})
    answer = connection.getresponse()
    return Response(answer.status, dict(answer.getheaders()), answer.read(), time.perf_counter() - started)


class PinnedConnection:
    """A keep-alive connection to gunicorn: the gthread worker that accepted it serves every request on it."""

    def __init__(self, pid: int, connection: http.client.HTTPConnection):
        self.pid, self._connection = pid, connection

    def call(self, method: str, path: str, headers: dict[str, str] | None = None) -> Response:
        return timed_request(self._connection, method, path, headers)

    def close(self) -> None:
        self._connection.close()


class Gunicorn(_Process):
    """`gunicorn -c gunicorn.conf.py wsgi:app` on a free loopback port, 2 gthread workers by default.

        with Gunicorn(database_url, redis_url, extra_env={...}) as server:
            server.get("/health")
    """

    label = "gunicorn"

    def __init__(self, database_url: str | None, redis_url: str | None, extra_env: dict[str, str] | None = None,
                 workers: int = 2, startup_timeout: float = 30.0, netns: NetworkNamespace | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="zenzefi-e2e-gunicorn-")
        workdir = Path(self._tmp.name)
        (workdir / "instance").mkdir()
        self.port = free_port()
        # In a namespace it listens on the address of its end of the link, else on 127.0.0.1.
        self.host = netns.address if netns else LOOPBACK
        # In a namespace also on its loopback, for an agent on that host (`netns.run`).
        extra_binds = f" --bind {self.host}:{self.port} --bind {LOOPBACK}:{self.port}" if netns else ""
        self.multiproc_dir = workdir / "prometheus"
        self.startup_timeout = startup_timeout
        self.workers = workers
        env = child_env(database_url, redis_url, workdir / "instance", {
            "GUNICORN_BIND": f"{self.host}:{self.port}",
            "GUNICORN_WORKERS": str(workers),
            "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc_dir),
            # Our own control socket (not ~/.gunicorn, shared by every gunicorn of this user) and the
            # worker's pid in the access log, so a test can tell which worker served what.
            "GUNICORN_CMD_ARGS": (f"--control-socket {workdir / 'gunicorn.ctl'} "
                                  f"--access-logformat '{ACCESS_LOG_FORMAT}'{extra_binds}"),
            **(extra_env or {}),
        })
        argv = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
        super().__init__(netns.wrap(argv) if netns else argv, env, workdir)

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

    def connection_to_each_worker(self, tries: int = 200) -> list[PinnedConnection]:
        """One keep-alive connection served by each worker, so that a test can spread its requests over all of them
        whichever worker the kernel hands new connections to. Each connection is opened with a probe that names
        it in the access log (`GET /probe-<random>`, a 404 outside the API, counted by no limit); connections
        that landed on a worker already found are closed. (Keep them busy: gunicorn closes a connection idle for
        `keepalive` seconds.)"""
        found: dict[int, PinnedConnection] = {}
        for _ in range(tries):
            connection = http.client.HTTPConnection(self.host, self.port, timeout=10.0)
            target = f"/probe-{uuid.uuid4().hex}"
            answer = timed_request(connection, "GET", target)
            assert answer.status == 404, self.describe(f"probe {target}: {answer!r}")
            pid = wait_for(lambda target=target: next(iter(self.served("GET", target)), None), 10,
                           lambda target=target: self.describe(f"the probe {target} is not in the access log"),
                           step=0.02)
            if pid in found:
                connection.close()
                continue
            found[pid] = PinnedConnection(pid, connection)
            if len(found) == self.workers:
                return list(found.values())
        for pinned in found.values():
            pinned.close()
        pytest.fail(self.describe(f"{tries} new connections reached only the workers {sorted(found)}"))

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                timeout: float = 5.0, body: bytes | None = None) -> Response:
        """One request on a fresh connection, so the kernel may hand it to either worker."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            return timed_request(connection, method, path, {"Connection": "close", **(headers or {})}, body)
        finally:
            connection.close()

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
    """`python -m worker [args]` against the given database and Redis.

    With `restart=True` it is started again a second after it exits, as compose's `restart: unless-stopped` (or
    systemd's `Restart=`) does in production; `restarts` counts how often.
    """

    label = "worker"
    RESTART_DELAY_SECONDS = 1.0

    def __init__(self, database_url: str | None, redis_url: str | None, args: Iterable[str] = (),
                 extra_env: dict[str, str] | None = None, name: str = "worker",
                 netns: NetworkNamespace | None = None, restart: bool = False):
        self.label = name
        self._tmp = tempfile.TemporaryDirectory(prefix=f"zenzefi-e2e-{name}-")
        workdir = Path(self._tmp.name)
        (workdir / "instance").mkdir()
        env = child_env(database_url, redis_url, workdir / "instance", extra_env)
        argv = [str(VENV_BIN / "python"), "-m", "worker", *args]
        super().__init__(netns.wrap(argv) if netns else argv, env, workdir)
        self.restarts = 0
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None
        if restart:
            self._supervising.set()

    def __enter__(self) -> Worker:
        self.spawn()
        if self._supervising.is_set():
            self._supervisor = threading.Thread(target=self._supervise, name=f"supervise-{self.label}", daemon=True)
            self._supervisor.start()
        return self

    def _supervise(self) -> None:
        while self._supervising.is_set():
            if self.process is not None and self.process.poll() is not None:
                time.sleep(self.RESTART_DELAY_SECONDS)
                if self._supervising.is_set():
                    self.restarts += 1
                    self.spawn()
            time.sleep(POLL_STEP * 4)

    def terminate(self, timeout: float = 10.0) -> int | None:
        self._supervising.clear()
        if self._supervisor is not None:
            self._supervisor.join(timeout=self.RESTART_DELAY_SECONDS + 5)
        return super().terminate(timeout)


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


# --- more hosts: network namespaces -------------------------------------------------------------------------

NETNS_PREFIX = "zenzefi-e2e-"
# The namespaces' links take /30s of 10.77.0.0/16, a private range chosen to be unused here (checked each time).
NETNS_NETWORK = ipaddress.ip_network("10.77.0.0/16")
UNREACHABLE_METRIC = "65000"


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def netns_unavailable() -> str | None:
    """Why this machine cannot make network namespaces joined by a veth pair (None when it can)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs its second pass as root)"
    token = uuid.uuid4().hex[:6]
    probe = f"{NETNS_PREFIX}probe-{token}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"`ip netns add` is refused here: {made.stderr.strip()}"
    try:
        veth = _ip("link", "add", f"zz{token}po", "type", "veth", "peer", "name", f"zz{token}pi", "netns", probe)
        if veth.returncode != 0:
            return f"a veth pair cannot be made here: {veth.stderr.strip()}"
    finally:
        _ip("netns", "del", probe)  # takes the pair with it
    return None


def _unused_subnet() -> ipaddress.IPv4Network:
    taken = [ipaddress.ip_interface(word).network
             for line in _ip("-o", "-4", "addr", "show").stdout.splitlines()
             for word in line.split() if "/" in word and word[0].isdigit()]
    chance = random.Random()
    for _ in range(1000):
        candidate = ipaddress.ip_network(f"10.77.{chance.randrange(256)}.{4 * chance.randrange(64)}/30")
        if not any(candidate.overlaps(network) for network in taken):
            return candidate
    raise RuntimeError(f"no free /30 left in {NETNS_NETWORK}")


class NetworkNamespace:
    """One more host on this machine: a network namespace joined to ours by a veth pair (its "cable").

    Inside there are `lo` and one end of the pair (`address`); outside, in our namespace, the other end
    (`peer_address`), in a /30 of 10.77.0.0/16 that nothing else uses. Processes run inside through `wrap`.
    PostgreSQL, Redis and the test's own servers listen on 127.0.0.1 only, so a process inside reaches them
    through a relay listening on `peer_address` (`relay`). `link_down`/`link_up` take the host's own end of the
    link down and up again. An `unreachable` route for the /30 (behind the link's own route) makes sure that no
    packet for these addresses ever leaves through this machine's default route while the link is away.
    """

    def __init__(self, label: str):
        token = uuid.uuid4().hex[:6]
        self.name = f"{NETNS_PREFIX}{token}-{label}"
        self.outside = f"zz{token}{label}o"[:15]
        self.inside = f"zz{token}{label}i"[:15]
        self.subnet: ipaddress.IPv4Network | None = None
        self.peer_address = ""
        self.address = ""
        self._relays: list[TcpRelay] = []

    def _run(self, *args: str, inside: bool = False) -> None:
        done = _ip(*(("-n", self.name) if inside else ()), *args)
        if done.returncode != 0:
            raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")

    def create(self) -> NetworkNamespace:
        self.subnet = _unused_subnet()
        self.peer_address, self.address = (str(host) for host in self.subnet.hosts())
        self._run("route", "add", "unreachable", str(self.subnet), "metric", UNREACHABLE_METRIC)
        self._run("netns", "add", self.name)
        try:
            self._run("link", "add", self.outside, "type", "veth", "peer", "name", self.inside, "netns", self.name)
            self._run("addr", "add", f"{self.peer_address}/30", "dev", self.outside)
            self._run("link", "set", self.outside, "up")
            self._run("link", "set", "lo", "up", inside=True)
            self._run("addr", "add", f"{self.address}/30", "dev", self.inside, inside=True)
            self._run("link", "set", self.inside, "up", inside=True)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        for relay in self._relays:
            relay.stop()
        _ip("netns", "del", self.name)  # the pair goes with it
        _ip("link", "del", self.outside)  # in case the namespace was never made
        if self.subnet is not None:
            _ip("route", "del", "unreachable", str(self.subnet), "metric", UNREACHABLE_METRIC)

    def __enter__(self) -> NetworkNamespace:
        return self.create()

    def __exit__(self, *exc_info) -> None:
        self.destroy()

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def relay(self, host: str, port: int) -> TcpRelay:
        """A service on this machine's loopback made reachable from inside, at `peer_address`:<relay.port>."""
        relay = TcpRelay(host, port, listen_host=self.peer_address).start()
        self._relays.append(relay)
        return relay

    def link_down(self) -> None:
        """The host loses its link: its end goes down (nothing it sends leaves, nothing reaches it)."""
        self._run("link", "set", self.inside, "down", inside=True)

    def link_up(self) -> None:
        self._run("link", "set", self.inside, "up", inside=True)
        # Neighbours that failed to answer while the link was away are not asked again for seconds: ask now.
        self._run("neigh", "flush", "dev", self.outside)
        self._run("neigh", "flush", "dev", self.inside, inside=True)
        # Its route to the other end comes back with the address; wait until it can be used again.
        wait_for(lambda: self.run(["ip", "-4", "route", "get", self.peer_address]).returncode == 0, 10,
                 f"{self.name}: no route to {self.peer_address} after the link came back")

    def run(self, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a command inside (as an agent on that host would) and give back its outcome."""
        return subprocess.run(self.wrap(argv), capture_output=True, text=True, timeout=timeout)


# --- PgBouncer ----------------------------------------------------------------------------------------------

PGBOUNCER_MISSING = "pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run's second pass does)"


def find_binary(name: str) -> str | None:
    """A program on PATH or in the sbin directories (Debian installs pgbouncer in /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


class PgBouncer(_Process):
    """`pgbouncer` in transaction pooling mode on a free loopback port, in front of one PostgreSQL server: every
    database name is passed through, `pool_size` server connections per database. `stop()` makes it refuse
    connections (connection refused), `start()` brings it back on the same port."""

    label = "pgbouncer"

    def __init__(self, database_url: str, pool_size: int = 10):
        binary = find_binary("pgbouncer")
        if binary is None:
            pytest.skip(PGBOUNCER_MISSING)
        self._tmp = tempfile.TemporaryDirectory(prefix="zenzefi-e2e-pgbouncer-")
        workdir = Path(self._tmp.name)
        workdir.chmod(0o755)  # pgbouncer drops root for the postgres user, who must read its files
        self.port = free_port()
        server = make_url(database_url)
        users = workdir / "users.txt"
        users.write_text(f'"{server.username}" "{server.password or ""}"\n')
        config = workdir / "pgbouncer.ini"
        config.write_text("\n".join([
            "[databases]",
            f"* = host={server.host or LOOPBACK} port={server.port or 5432}",
            "[pgbouncer]",
            f"listen_addr = {LOOPBACK}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {users}",
            "pool_mode = transaction",
            f"default_pool_size = {pool_size}",
            "max_client_conn = 500",
            f"admin_users = {server.username}",
            "",
        ]))
        for path in (users, config):
            path.chmod(0o644)
        self.server_url = database_url
        # PgBouncer refuses to run as root; CI runs as root.
        argv = [binary, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(config)]
        super().__init__(argv, dict(os.environ), workdir)

    def url(self, database_url: str | None = None) -> str:
        """`database_url` (the server's by default) through this PgBouncer."""
        return make_url(database_url or self.server_url).set(host=LOOPBACK, port=self.port).render_as_string(
            hide_password=False)

    def _accepting(self) -> bool:
        if not self.alive():
            pytest.fail(f"pgbouncer exited with {self.process.returncode}\n{self.logs()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), timeout=0.5):
            return True
        return False

    def start(self) -> PgBouncer:
        self.spawn()
        wait_for(self._accepting, 15, lambda: f"pgbouncer did not listen on {self.port}\n{self.logs()}")
        return self

    def stop(self) -> None:
        self.terminate()

    def __enter__(self) -> PgBouncer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise


@dataclass
class DatabaseRoute:
    """How processes under test reach the test database: straight to PostgreSQL, or through PgBouncer in
    transaction pooling mode (which the app must be told: `DATABASE_TRANSACTION_POOLING`)."""

    name: str
    url: str

    @property
    def pooled(self) -> bool:
        return self.name == "pgbouncer"

    @property
    def env(self) -> dict[str, str]:
        """For child processes (gunicorn, the worker, flask commands)."""
        return {"DATABASE_TRANSACTION_POOLING": "true"} if self.pooled else {}

    @property
    def config(self) -> dict[str, Any]:
        """For an app made in this process."""
        return {"DATABASE_URL": self.url, "DATABASE_TRANSACTION_POOLING": self.pooled}


# --- Redis with Sentinels -----------------------------------------------------------------------------------

SENTINEL_MISSING = ("redis-sentinel is not installed (Debian: apt-get install redis-sentinel; .ci/run's second pass "
                    "does)")
SENTINEL_SERVICE = "zenzefi"
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10000


class RedisServer(_Process):
    """A `redis-server` of our own on a free loopback port, without persistence; a replica of `replica_of`."""

    def __init__(self, label: str, replica_of: int | None = None):
        binary = find_binary("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.label = label
        self._tmp = tempfile.TemporaryDirectory(prefix=f"zenzefi-e2e-{label}-")
        workdir = Path(self._tmp.name)
        self.port = free_port()
        argv = [binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
                "--dir", str(workdir)]
        if replica_of is not None:
            argv += ["--replicaof", LOOPBACK, str(replica_of)]
        super().__init__(argv, dict(os.environ), workdir)

    def client(self) -> redis.Redis:
        return redis.Redis(LOOPBACK, self.port, socket_timeout=2, socket_connect_timeout=1)

    def _answers(self) -> bool:
        if not self.alive():
            pytest.fail(f"{self.label} exited with {self.process.returncode}\n{self.logs()}")
        try:
            with contextlib.closing(self.client()) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def __enter__(self) -> RedisServer:
        self.spawn()
        try:
            wait_for(self._answers, 15, lambda: f"{self.label} did not answer PING\n{self.logs()}")
        except BaseException:
            self.close()
            raise
        return self

    def crash(self) -> None:
        """SIGKILL: the server vanishes without a goodbye, as a crashed machine would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


class RedisSentinel(_Process):
    """A `redis-sentinel` on a free loopback port watching `service` at 127.0.0.1:<primary_port> (quorum 2)."""

    def __init__(self, label: str, primary_port: int, service: str = SENTINEL_SERVICE):
        binary = find_binary("redis-sentinel")
        if binary is None:
            pytest.skip(SENTINEL_MISSING)
        self.label = label
        self._tmp = tempfile.TemporaryDirectory(prefix=f"zenzefi-e2e-{label}-")
        workdir = Path(self._tmp.name)
        self.port = free_port()
        self.service = service
        config = workdir / "sentinel.conf"  # a Sentinel rewrites its own configuration file
        config.write_text("\n".join([
            f"port {self.port}",
            f"bind {LOOPBACK}",
            f"dir {workdir}",
            f"sentinel monitor {service} {LOOPBACK} {primary_port} 2",
            *self.tuning(service),
            "",
        ]))
        super().__init__([binary, str(config)], dict(os.environ), workdir)

    @staticmethod
    def tuning(service: str) -> list[str]:
        """Fast failure detection for tests (production keeps Sentinel's defaults or its own)."""
        return [f"sentinel down-after-milliseconds {service} {SENTINEL_DOWN_AFTER_MS}",
                f"sentinel failover-timeout {service} {SENTINEL_FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {service} 1"]

    def client(self) -> redis.Redis:
        return redis.Redis(LOOPBACK, self.port, socket_timeout=2, socket_connect_timeout=1, decode_responses=True)

    def __enter__(self) -> RedisSentinel:
        self.spawn()
        return self


class SentinelCluster:
    """A primary, one replica and three Sentinels on loopback: what compose's `ha` profile runs."""

    def __init__(self) -> None:
        self.primary: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.sentinels: list[RedisSentinel] = []
        self._stack = contextlib.ExitStack()

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    def __enter__(self) -> SentinelCluster:
        try:
            self.primary = self._stack.enter_context(RedisServer("redis-primary"))
            self.replica = self._stack.enter_context(RedisServer("redis-replica", replica_of=self.primary.port))
            self.sentinels = [self._stack.enter_context(RedisSentinel(f"sentinel-{index}", self.primary.port))
                              for index in range(3)]
            wait_for(self._settled, 30, lambda: f"the Sentinels did not settle\n{self.logs()}", step=0.2)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def logs(self) -> str:
        return "\n".join(part.logs(15) for part in (self.primary, self.replica, *self.sentinels) if part)

    def client(self) -> redis.Redis:
        """A client of whichever primary the Sentinels name, built as the app builds its own."""
        return parse_redis_url(self.url).client(socket_timeout=2, socket_connect_timeout=1)

    def _ask(self, sentinel: RedisSentinel, *command: str) -> Any:
        with contextlib.closing(sentinel.client()) as client:
            return client.execute_command(*command)

    def _settled(self) -> bool:
        """Every Sentinel knows the primary, its replica (in sync) and the two other Sentinels."""
        try:
            for sentinel in self.sentinels:
                master = self._ask(sentinel, "SENTINEL", "MASTER", SENTINEL_SERVICE)
                state = dict(zip(master[::2], master[1::2], strict=True))
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
            with contextlib.closing(self.replica.client()) as client:
                return client.info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    def primary_port(self) -> int | None:
        """The port the Sentinels name for the service now (None if they name none)."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                answer = self._ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE)
                if answer:
                    return int(answer[1])
        return None

    def forget_primary(self) -> None:
        """Every Sentinel stops monitoring the service: they name no primary at all."""
        for sentinel in self.sentinels:
            self._ask(sentinel, "SENTINEL", "REMOVE", SENTINEL_SERVICE)

    def monitor_again(self, port: int) -> None:
        for sentinel in self.sentinels:
            self._ask(sentinel, "SENTINEL", "MONITOR", SENTINEL_SERVICE, LOOPBACK, str(port), "2")
            for line in RedisSentinel.tuning(SENTINEL_SERVICE):
                _, option, _, value = line.split()
                self._ask(sentinel, "SENTINEL", "SET", SENTINEL_SERVICE, option, value)
