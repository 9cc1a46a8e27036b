"""gunicorn settings: gthread workers (streamed proxy bodies must not be killed by a sync timeout), answering
the errors gunicorn raises itself in the SPEC's JSON error shape."""
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from http import HTTPStatus

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import ThreadWorker

# Workers share their metrics through files in this directory, so /metrics is right whichever worker answers.
# It must be in the environment before a worker imports prometheus_client; set here when the caller did not.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="zenzefi-metrics-")

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# gthread, answering the errors gunicorn raises itself (414, 431, 400, 501) in JSON instead of HTML (below).
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
threads = int(os.environ.get("GUNICORN_THREADS", 8))
# gthread: `timeout` is the worker heartbeat, not a cap on one request's length.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 120))
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))
max_requests_jitter = 100
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# Request size limits (longer → a JSON 414/431). The desktop client forwards the upstream web app's own URLs
# (filters and exports with long query strings) and cookies: the request line gets gunicorn's largest finite
# value (8190 bytes, as nginx's default 8k header buffer), header fields 16 KiB each and up to 200 of them.
# ops/nginx.example.conf keeps nginx's limits in step.
limit_request_line = 8190
limit_request_field_size = 16384
limit_request_fields = 200
# Sockets and threads must not cross fork(): each worker builds its own app.
preload_app = False


def on_starting(server):
    """Multiprocess metrics need a clean directory per run."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)


def child_exit(server, worker):
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


# --- JSON instead of gunicorn's HTML error pages -------------------------------------------------------------
# A request gunicorn refuses before it reaches the app (a request line over limit_request_line: 414; header
# fields over their limits: 431; a NUL or other invalid byte in a header, a bad request line or chunk: 400; an
# unknown Transfer-Encoding: 501) is answered by Worker.handle_error, which ends in util.write_error, an HTML
# page. gunicorn has no setting or server hook for that page, so a subclass of the gthread worker lets gunicorn
# decide everything as it does — the status, its logging, the access-log line — with the client socket stood
# in for by a recorder, then sends the same status with a JSON body instead. The message never echoes the
# refused input (a 414's request line can be 8 KB of anything). It lives here, not in the package: the master
# loads the worker class, and must not import the app.

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
# What was wrong with a 400, in a few words, by gunicorn's exception class.
_BAD_REQUEST = (
    ((http_errors.InvalidHeaderName, http_errors.InvalidHeader), "invalid header field (name or value)"),
    ((http_errors.InvalidRequestLine,), "invalid request line"),
    ((http_errors.InvalidRequestMethod,), "invalid method"),
    ((http_errors.InvalidHTTPVersion,), "unsupported HTTP version"),
    ((http_errors.ObsoleteFolding,), "header line folding is not allowed"),
    ((http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension),
     "invalid chunked body"),
    ((http_errors.InvalidSchemeHeaders,), "contradicting scheme headers"),
    ((http_errors.InvalidProxyLine,), "invalid PROXY protocol line"),
)


class _Recorder:
    """The client socket as gunicorn's error page writer sees it: what it sends is kept, not sent."""

    def __init__(self, sock):
        self._sock = sock
        self.written = bytearray()

    def sendall(self, data):
        self.written += data

    def send(self, data):
        self.written += data
        return len(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _error_message(status, exc, cfg):
    if status == 414:
        return f"The request line (method, path and query) is longer than {cfg.limit_request_line} bytes."
    if status == 431:
        return (f"The request's header fields are too large: at most {cfg.limit_request_fields} fields of at most "
                f"{cfg.limit_request_field_size} bytes each.")
    if status == 501:
        return "Unsupported Transfer-Encoding: only chunked is supported."
    if status == 417:
        return "Unsupported Expect header: only 100-continue is supported."
    if status == 400:
        for kinds, what in _BAD_REQUEST:
            if isinstance(exc, kinds):
                return f"Malformed HTTP request: {what}."
        return "Malformed HTTP request."
    if status >= 500:
        return "Internal server error."
    return HTTPStatus(status).phrase + "."


def _json_error(status, message):
    # The shape of zenzefi_backend.errors.error_body: {code, status (reason phrase), message}.
    body = json.dumps({"code": status, "status": HTTPStatus(status).phrase, "message": message},
                      separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrorThreadWorker(ThreadWorker):
    def handle_error(self, req, client, addr, exc):
        recorder = _Recorder(client)
        super().handle_error(req, recorder, addr, exc)
        match = _STATUS_LINE.match(bytes(recorder.written))
        if match is None:  # gunicorn wrote nothing we recognise: pass it on untouched
            answer = bytes(recorder.written)
        else:
            status = int(match.group(1))
            answer = _json_error(status, _error_message(status, exc, self.cfg))
        if answer:
            try:
                util.write_nonblock(client, answer)
            except Exception:  # the client is gone; as gunicorn does, only note it
                self.log.debug("Failed to send error message.")


worker_class = JsonErrorThreadWorker
