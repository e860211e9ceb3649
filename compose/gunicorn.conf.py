"""gunicorn settings for the web process, the way production serves Netring.

Threads, not more processes: registry requests wait on PostgreSQL, and each process keeps its
persistent database connections. Override any value with GUNICORN_CMD_ARGS.
"""

import multiprocessing
import os

workers = int(os.environ.get("NETRING_WEB_WORKERS", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("NETRING_WEB_THREADS", 4))
keepalive = 30
timeout = 30
graceful_timeout = 10
max_requests = 20000
max_requests_jitter = 2000
accesslog = None
errorlog = "-"
