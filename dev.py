#!/usr/bin/env python3
"""Quick start with nothing but Python 3.11+:

    python3 dev.py serve          install into .venv, migrate, seed, and run on the embedded default (HOST, PORT)
    python3 dev.py test [ARGS]    install the test extras into .venv and run pytest (ARGS go to pytest)

The embedded default needs no services: SQLite in instance/, an in-process Redis stand-in, inline jobs.
Set TEST_DATABASE_URL / TEST_REDIS_URL to run the tests against real PostgreSQL and Redis.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def run(*args: str | Path, **kwargs) -> None:
    subprocess.run([str(arg) for arg in args], check=True, cwd=ROOT, **kwargs)


def _fingerprint(extras: str) -> str:
    return hashlib.sha256((ROOT / "setup.cfg").read_bytes() + extras.encode()).hexdigest()


def _up_to_date(extras: str) -> bool:
    stamp = VENV / f".installed-{extras or 'base'}"
    return stamp.exists() and stamp.read_text() == _fingerprint(extras)


def ensure_installed(extras: str) -> None:
    """(Re)install only when setup.cfg changed since the last install of these extras (an up-to-date install
    with any extras includes the base package)."""
    if sys.version_info < (3, 11):
        sys.exit(f"Python 3.11 or newer is needed (this is {sys.version.split()[0]}).")
    if _up_to_date(extras):
        return
    if not extras and any(_up_to_date(stamp.name.removeprefix(".installed-"))
                          for stamp in VENV.glob(".installed-*") if stamp.name != ".installed-base"):
        return
    if not PYTHON.exists():
        print("Creating the virtual environment in .venv …", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(f"Installing zenzefi-backend{f'[{extras}]' if extras else ''} into .venv …", flush=True)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]" if extras else ".")
    (VENV / f".installed-{extras or 'base'}").write_text(_fingerprint(extras))


def flask(*args: str, env: dict[str, str]) -> None:
    run(BIN / "flask", "--app", "wsgi", *args, env=env)


def serve(args: list[str]) -> int:
    if args:
        print("serve takes no arguments; HOST and PORT set where it listens.", file=sys.stderr)
        return 2
    ensure_installed("")
    env = dict(os.environ)
    flask("db", "upgrade", env=env)
    flask("bundles", "seed", env=env)
    os.chdir(ROOT)
    # The server binds its port first and prints "listening" only once it does (zenzefi_backend/devserver.py).
    os.execve(str(PYTHON), [str(PYTHON), "-m", "zenzefi_backend.devserver"], env)
    return 0


def test(args: list[str]) -> int:
    ensure_installed("test")
    return subprocess.run([str(PYTHON), "-m", "pytest", *args], cwd=ROOT).returncode


def main() -> int:
    commands = {"serve": serve, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
