"""gunicorn settings, read from the environment like everything else."""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
# Threaded workers: requests mostly wait on PostgreSQL, and a streamed export must not hold
# a whole process.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# For gthread workers this is a liveness check of the worker process (its main thread
# heartbeats while request threads stream), not a per-request limit: long exports are not
# cut. A stream that does break is detectable by the client (see docs/deploy.md).
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
graceful_timeout = 30
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None  # empty: no access log
