"""gunicorn settings for the web process, the way production serves Netring.

Threads, not more processes: registry requests wait on PostgreSQL, and each process keeps its
persistent database connections. Override any value with GUNICORN_CMD_ARGS.
"""

import multiprocessing
import os


def _count(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise SystemExit(f"invalid configuration:\n  {name}={raw!r}: expected a whole number from 1 to 256")
    return int(raw)


# One process more than cores: a process waits on the GIL or on PostgreSQL part of the time,
# and the extra one keeps both cores busy (the heartbeat benchmark on 2 cores: 2,814-2,931/s
# with 2 processes, 2,952-3,088/s with 3).
workers = _count("NETRING_WEB_WORKERS", multiprocessing.cpu_count() + 1)
worker_class = "gthread"
threads = _count("NETRING_WEB_THREADS", 4)
keepalive = 30
timeout = 30
graceful_timeout = 10
max_requests = 20000
max_requests_jitter = 2000
accesslog = None
errorlog = "-"
