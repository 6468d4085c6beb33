"""gunicorn settings, read from the environment like everything else."""

import os
import sys

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
# Threaded workers: requests mostly wait on PostgreSQL, and a streamed export must not hold
# a whole process.
worker_class = "gthread"
# ...reading each request's headers in the worker's event loop rather than on a thread, so
# clients that send them slowly hold no thread, and closing a connection whose headers take
# longer than this many seconds (deploy/gunicorn_worker.py). This is the only slow-client
# guard when gunicorn is reached directly; behind nginx (deploy/nginx.conf) it is a backstop.
header_timeout = float(os.environ.get("GUNICORN_HEADER_TIMEOUT", "10"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from deploy import gunicorn_worker
except ImportError as exc:  # a gunicorn without the gthread internals it builds on
    print(f"gunicorn.conf.py: stock gthread worker, no header deadline ({exc})", file=sys.stderr)
else:
    gunicorn_worker.header_timeout = header_timeout
    worker_class = gunicorn_worker.HeaderDeadlineThreadWorker
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# For gthread workers this is a liveness check of the worker process (its main thread
# heartbeats while request threads stream), not a per-request limit: long exports are not
# cut. A stream that does break is detectable by the client (see docs/deploy.md).
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
graceful_timeout = 30
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None  # empty: no access log
