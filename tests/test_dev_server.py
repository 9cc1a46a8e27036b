"""`python3 dev.py serve`, as a newcomer runs it: it says "listening" only once the port accepts connections,
fails clearly (and starts nothing) when the port is taken, and says which env file and which mode it runs with."""
from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[1]
LISTENING = "Zenzefi backend listening on"
SCHEDULER_STARTED = "periodic scheduler started"
STRONG = {name: f"{name.lower()}-Xq7pL2vR9sK4mN8wT3yB6cF1hJ5dG0aZ" for name in
          ("SECRET_KEY", "JWT_SECRET_KEY", "PAYMENT_WEBHOOK_SECRET")}

pytestmark = pytest.mark.e2e


@dataclass
class Serve:
    process: subprocess.Popen
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def serve_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    """Our environment minus anything that would point the server elsewhere; the embedded default."""
    dropped = ("TEST_", "ZENZEFI_", "PYTEST_", "GUNICORN_", "PROMETHEUS_")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(dropped) and name not in {"DATABASE_URL", "REDIS_URL", "INLINE_SCHEDULER"}}
    env.update({"HOST": LOOPBACK, "PORT": str(port), "ZENZEFI_INSTANCE_PATH": str(tmp_path / "instance"),
                "ZENZEFI_ENV_FILE": "none", "PYTHONUNBUFFERED": "1", **extra})
    return env


@contextlib.contextmanager
def serving(tmp_path: Path, env: dict[str, str]) -> Iterator[Serve]:
    stdout, stderr = tmp_path / "serve.out", tmp_path / "serve.err"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen([sys.executable, str(ROOT / "dev.py"), "serve"], cwd=ROOT, env=env, stdout=out,
                                   stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield Serve(process, stdout, stderr)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def wait_for_line(serve: Serve, text: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in serve.stdout.read_text(errors="replace"):
        if serve.process.poll() is not None:
            pytest.fail(f"dev.py serve exited with {serve.process.returncode}:\n{serve.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} within {timeout} s:\n{serve.output()}")
        time.sleep(0.02)


def get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_listening_is_printed_once_the_port_accepts_connections(tmp_path):
    port = free_port()
    with serving(tmp_path, serve_env(tmp_path, port)) as serve:
        wait_for_line(serve, LISTENING)
        assert get(port, "/health/live") == 200  # at once: no retry, no sleep
        output = serve.stdout.read_text()
        assert "Settings file: none read" in output
        assert f"Mode: development · database sqlite:///{tmp_path / 'instance' / 'zenzefi.db'}" in output
        assert "Redis in-process stand-in" in output and "mock payments on" in output
        assert output.index("Mode: development") < output.index(LISTENING)


def test_a_taken_port_is_a_clear_failure_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with serving(tmp_path, serve_env(tmp_path, port, LOG_LEVEL="INFO")) as serve:
            try:
                code = serve.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pytest.fail(f"dev.py serve kept running on a taken port:\n{serve.output()}")
    assert code != 0
    output = serve.output()
    assert f"Cannot listen on {LOOPBACK}:{port}" in serve.stderr.read_text(), output
    assert "Set PORT" in output
    assert LISTENING not in output and SCHEDULER_STARTED not in output, output


def test_the_env_file_read_and_the_mode_it_switches_on_are_named(tmp_path):
    env_file = tmp_path / "compose.env"
    lines = ["ZENZEFI_ENV=production", "MOCK_PAYMENTS_ENABLED=false", *(f"{k}={v}" for k, v in STRONG.items()),
             "PAYMENT_PROVIDER=gateway", "PAYMENT_GATEWAY_URL=https://pay.example.com/{payment_id}"]
    env_file.write_text("\n".join(lines) + "\n")
    port = free_port()
    with serving(tmp_path, serve_env(tmp_path, port, ZENZEFI_ENV_FILE=str(env_file))) as serve:
        wait_for_line(serve, LISTENING)
        output = serve.stdout.read_text()
    assert f"Settings file: {env_file} (set ZENZEFI_ENV, MOCK_PAYMENTS_ENABLED, SECRET_KEY, JWT_SECRET_KEY, " \
           "PAYMENT_WEBHOOK_SECRET, PAYMENT_PROVIDER, PAYMENT_GATEWAY_URL; values not shown)." in output, output
    assert "Mode: production" in output and "mock payments off" in output
    assert f"Note: ZENZEFI_ENV, MOCK_PAYMENTS_ENABLED came from {env_file}" in output
    assert not any(secret in serve.output() for secret in STRONG.values())
