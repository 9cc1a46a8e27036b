"""Business and proxy metrics (SPEC §3.11), counted where the events happen.

Plain prometheus_client metrics: in gunicorn's multiprocess mode they are written per process and summed
at scrape time, so `/metrics` is right whichever worker answers.
"""
from __future__ import annotations

from prometheus_client import Counter, Histogram

proxy_requests = Counter("proxy_requests_total", "Proxied requests by method and answer status",
                         ["method", "status"])
proxy_latency = Histogram("proxy_latency_seconds", "Time from request to upstream response headers",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
proxy_bytes = Counter("proxy_bytes_total", "Bytes through the proxy by direction", ["direction"])
token_validations = Counter("token_validations_total", "Access-token checks by result", ["result"])
