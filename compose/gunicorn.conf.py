"""gunicorn settings for the web process, the way production serves Netring.

Threads, not more processes: registry requests wait on PostgreSQL, and each process keeps its
persistent database connections. Override any value with GUNICORN_CMD_ARGS.
"""

import ipaddress
import multiprocessing
import os


def _count(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise SystemExit(f"invalid configuration:\n  {name}={raw!r}: expected a whole number from 1 to 256")
    return int(raw)


def _networks(name: str) -> list[str] | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise SystemExit(
                f"invalid configuration:\n  {name}={raw!r}: {item!r} is not a network such as 10.0.0.0/8"
            ) from None
    return networks


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

# The proxies Django takes X-Forwarded-For from (members.auth.client_ip) are the ones whose
# X-Forwarded-Proto gunicorn believes: a request they forwarded over TLS is https to Django
# (CSRF's origin check, secure redirects). Unset, gunicorn's default: loopback only.
_proxies = _networks("NETRING_TRUSTED_PROXIES")
if _proxies is not None:
    forwarded_allow_ips = ",".join(_proxies)
