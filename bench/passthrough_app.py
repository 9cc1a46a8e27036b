"""The baseline (b) of bench/proxy.py: a bare Flask + requests pass-through with no checks at all.

    BENCH_UPSTREAM_URL=http://127.0.0.1:8080 gunicorn -c gunicorn.conf.py bench.passthrough_app:app

Any method and path go to BENCH_UPSTREAM_URL + path + query, on one pooled `requests` session per thread,
streamed (`stream=True`) and passed back as raw bytes. Hop-by-hop headers are dropped both ways (gunicorn
would drop them from the answer anyway); nothing else is looked at.
"""
from __future__ import annotations

import os
import threading

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:8080").rstrip("/")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
CHUNK_BYTES = 64 * 1024
DROPPED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                     "transfer-encoding", "upgrade", "host", "content-length"})

app = Flask(__name__)
_local = threading.local()


def session() -> requests.Session:
    pooled = getattr(_local, "session", None)
    if pooled is None:
        pooled = requests.Session()
        pooled.trust_env = False
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        pooled.mount("http://", adapter)
        _local.session = pooled
    return pooled


@app.route("/", defaults={"path": ""}, methods=METHODS)
@app.route("/<path:path>", methods=METHODS)
def passthrough(path: str) -> Response:
    query = request.query_string.decode("latin-1")
    url = f"{UPSTREAM}/{path}" + (f"?{query}" if query else "")
    headers = {name: value for name, value in request.headers.items() if name.lower() not in DROPPED}
    upstream = session().request(request.method, url, headers=headers,
                                 data=request.stream if request.content_length else None,
                                 stream=True, allow_redirects=False, timeout=(5, 60))

    def body():
        try:
            yield from upstream.raw.stream(CHUNK_BYTES, decode_content=False)
        finally:
            upstream.close()

    answer_headers = [(name, value) for name, value in upstream.raw.headers.items() if name.lower() not in DROPPED]
    if upstream.raw.headers.get("Content-Length"):
        answer_headers.append(("Content-Length", upstream.raw.headers["Content-Length"]))
    return Response(body(), status=upstream.status_code, headers=answer_headers, direct_passthrough=True)
