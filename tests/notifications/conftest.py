"""Fixtures of the notification tests: a real webhook receiver on 127.0.0.1, a resolver the tests control, a
clock that moves forward, and the official Standard Webhooks verifier (held to the spec's published vector)."""
from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook

from zenzefi_backend import clock

LOOPBACK = "127.0.0.1"
HOLD_LIMIT_SECONDS = 10.0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """A webhook receiver: a real HTTP(S) server on 127.0.0.1 that records every request and answers with the
    statuses queued by `answer(...)` (then 204). While `hold` is set it keeps requests waiting, unanswered.
    `stop()` closes it (connections are refused); `start()` listens again on the same port."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.tls = tls
        self.port = 0
        self.requests: list[Received] = []
        self.hold = threading.Event()
        self._statuses: deque[int] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.server_names: list[str | None] = []  # the TLS SNI of each handshake
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _context: self.server_names.append(name)

    def url(self, path: str = "/hooks", host: str = LOOPBACK) -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def answer(self, *statuses: int) -> None:
        with self._lock:
            self._statuses.extend(statuses)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"the receiver got {len(self.requests)} requests, not {count}, within {timeout} s")
            time.sleep(0.02)
        return list(self.requests)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    receiver.requests.append(Received(self.command, self.path, headers, body))
                    status = receiver._statuses.popleft() if receiver._statuses else 204
                deadline = time.monotonic() + HOLD_LIMIT_SECONDS
                while receiver.hold.is_set() and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"/redirected-from{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((LOOPBACK, self.port), Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"webhook-receiver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.hold.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def verify_signature(secret: str, received: Received) -> dict[str, Any]:
    """What a receiver does: the `standardwebhooks` library's check (a `v1` signature over id, timestamp and raw
    body; the timestamp within 5 minutes of now); the parsed body, or WebhookVerificationError."""
    return Webhook(secret).verify(received.body, received.headers)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver().start()
    yield found
    found.stop()


class Resolver:
    """`socket.getaddrinfo` for the names a test sets; every other name and IP literal goes to the real one.
    A name can answer differently on later lookups (DNS rebinding): `set(name, first, then)`."""

    def __init__(self, real: Callable[..., Any]):
        self.real = real
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []

    def set(self, name: str, *answers: list[str] | str) -> None:
        self.answers[name] = [[answer] if isinstance(answer, str) else list(answer) for answer in answers]

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 - socket's own signature
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self.real(host, port, family, type, proto, flags)
        self.lookups.append(name)
        queue = self.answers[name]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        results = []
        for address in addresses:
            if ":" in address:
                results.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, int(port or 0), 0, 0)))
            else:
                results.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0))))
        return results


@pytest.fixture
def resolver(monkeypatch) -> Resolver:
    fake = Resolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.fixture
def public_targets_only(app, monkeypatch) -> None:
    """Production's rule: webhook targets must be public addresses."""
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE_TARGETS", False)


class Timeline:
    """Moves this process's clock forward for the rest of the test (never by sleeping)."""

    def __init__(self, stack: ExitStack):
        self._stack = stack

    def advance(self, delta: timedelta) -> None:
        self._stack.enter_context(clock.travel(delta))

    def reach(self, moment: datetime) -> None:
        """Make `moment` the past (by a millisecond), if it is not already."""
        ahead = moment - clock.now()
        if ahead >= timedelta(0):
            self.advance(ahead + timedelta(milliseconds=1))


@pytest.fixture
def timeline() -> Iterator[Timeline]:
    with ExitStack() as stack:
        yield Timeline(stack)
