"""The proxy: the desktop client's traffic, checked and forwarded to the Zenzefi server.

One request, top to bottom, in three files:

- entry.py — the WSGI entry. `ProxyFastPath` (WSGI middleware) and Flask's route (routes.py) both call
  `forward_request`: admission, the 413, forwarding, the counts, the token's first use.
- admission.py — may it go through? Every check of SPEC §3.6 in order: the headers, the path's verdicts, then one
  Redis round trip (the ADMIT Lua script: token, owner, scope, device holder, rate limit, request count), the
  database fallback while Redis is unreachable, the token's clock started on first use, and `/proxy/status`.
- forwarding.py — the upstream: the request head written from the WSGI environ, the answer's head read and its
  body streamed back untouched, connections pooled per thread.

Around them, one idea each:

- cache.py — the Redis cache of tokens, owners and device holders (key names, the cached states, Redis' pause
  after a failure) and its invalidation: the tombstones a revoke, a gift or a deactivation writes, and the sweep
  that writes them again.
- counters.py — what is counted and how it gets to its place: request counts, bytes in and out (a response's
  bytes wait per process for the next ADMIT or a timer), the flush of Redis' counters into the session rows and
  the `usage_recorded` signal analytics listens to.
- sessions.py — the database's sessions: the device rule when Redis cannot decide, ending and closing sessions.
- subscriptions.py — how the cache and the sessions follow what the domains announce (zenzefi_backend.events).
- paths.py — canonical paths and the `certificates_only` scope. runtime.py — what the proxy needs of its app
  outside Flask's contexts. routes.py, schemas.py, models.py — the blueprint, its schema, the session table.

Modules import downwards in this order, never back: routes → entry → admission → sessions → counters → cache →
models (subscriptions sits above sessions, runtime under admission and above counters; forwarding and paths import
no other proxy module).
"""
