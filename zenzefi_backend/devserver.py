"""`python3 dev.py serve` ends here: the development server on the embedded default (werkzeug, threaded).

In this order, so that what it prints is true: bind the port (if that fails, say so and exit 1 — nothing else
has started); build the app (which reads the env file and, on the embedded default, starts the periodic jobs'
thread); say which env file was read and which mode is on; only then print "listening", when the socket
already accepts connections.
"""
from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit, urlunsplit

from flask import Flask
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from .config import ENV_FILE_VARIABLE, ConfigError, EnvFile

# Settings that make `serve` something else than the embedded development default when a file sets them.
SWITCHES = ("ZENZEFI_ENV", "DATABASE_URL", "REDIS_URL", "MOCK_PAYMENTS_ENABLED", "SMTP_HOST")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug: TIME_WAIT is no obstacle
        listener.bind((host, port))
        listener.listen(128)
    except OSError:
        listener.close()
        raise
    return listener


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def startup_summary(app: Flask) -> list[str]:
    """Which env file was read (names of what it set, never values) and which mode is on."""
    env_file: EnvFile = app.extensions["zenzefi-env-file"]
    config = app.config
    lines = []
    if env_file.path is None:
        lines.append(f"Settings file: none read ({ENV_FILE_VARIABLE} names one; a .env in the project is read by "
                     "default).")
    else:
        applied = ", ".join(env_file.applied) or "nothing new"
        lines.append(f"Settings file: {env_file.path} (set {applied}; values not shown).")
        if env_file.ignored:
            lines.append(f"  Already set in the environment, so not taken from it: {', '.join(env_file.ignored)}.")
    database = make_url(config["SQLALCHEMY_DATABASE_URI"]).render_as_string(hide_password=True)
    redis = _hide_password(config["REDIS_URL"]) if config["REDIS_URL"] else "in-process stand-in (jobs run inline)"
    lines.append(f"Mode: {config['ZENZEFI_ENV']} · database {database} · Redis {redis} · "
                 f"mock payments {'on' if config['MOCK_PAYMENTS_ENABLED'] else 'off'}.")
    switched = [name for name in env_file.applied if name in SWITCHES]
    if switched:
        lines.append(f"Note: {', '.join(switched)} came from {env_file.path}, so this is not the embedded development "
                     f"default. If that file was written for docker compose, move it away or start with "
                     f"{ENV_FILE_VARIABLE}=none.")
    return lines


def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "5000"))
    try:
        listener = bind(host, port)
    except OSError as exc:
        print(f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Is another server using that port? "
              f"Set PORT (and HOST) to listen elsewhere.", file=sys.stderr, flush=True)
        return 1
    os.environ.setdefault("INLINE_SCHEDULER", "true")  # no RQ worker on the embedded default: jobs run in-process
    from . import create_app

    try:
        app = create_app()
    except ConfigError as exc:
        listener.close()
        print(f"Cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    server = make_server(host, port, app, threaded=True, fd=listener.fileno())
    listener.close()  # the server holds its own duplicate of the socket
    for line in startup_summary(app):
        print(line, flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"\nZenzefi backend listening on http://{shown}:{port}  (API docs: http://{shown}:{port}/docs)\n",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
