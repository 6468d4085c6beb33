"""gunicorn's threaded worker, with request headers read off the threads and a deadline.

The stock gthread worker hands a connection to a thread as soon as its first bytes arrive,
and the thread then blocks until the headers are complete, without a deadline: a few dozen
clients sending a header line a second hold every thread, and every other request waits.

This worker reads the headers in the worker's event loop instead. A connection's available
bytes are read without blocking; until the blank line that ends the headers has arrived, the
connection waits in the poller (holding no thread), and it is closed once the headers have
taken longer than GUNICORN_HEADER_TIMEOUT seconds (`header_timeout` below). Complete headers
go to a thread with the bytes read so far, and gunicorn's parser carries on as usual. The
body is read by the application's thread as before: put a buffering proxy (nginx, see
deploy/nginx.conf) in front for slow uploads.

gunicorn.conf.py selects it (worker_class) and sets `header_timeout`.
"""

from __future__ import annotations

import contextlib
import socket
import time

from gunicorn.workers.gthread import _DEFER, TConn, ThreadWorker

#: Seconds a request's headers may take, from their first byte (a new connection: from its
#: accept). Set from GUNICORN_HEADER_TIMEOUT by gunicorn.conf.py.
header_timeout = 10.0


def _header_bytes_limit(cfg) -> int:
    """Past this many bytes without the end of the headers, gunicorn's parser refuses them
    anyway (431 / 400), so they go to it instead of waiting for more."""
    line, fields, size = (
        cfg.limit_request_line,
        cfg.limit_request_fields,
        cfg.limit_request_field_size,
    )
    if not (line and fields and size):
        return 1024 * 1024
    return line + 2 + fields * (size + 2) + 2


class HeaderDeadlineThreadWorker(ThreadWorker):
    def handle(self, conn: TConn):
        if self.cfg.is_ssl or conn.is_http2:
            return super().handle(conn)  # TLS/HTTP/2 framing: left to gunicorn
        buffered = getattr(conn, "header_bytes", None)
        if buffered is None:  # a new request on this connection
            buffered = b""
            conn.header_deadline = time.monotonic() + header_timeout
            if conn.parser is not None:  # kept alive: bytes the last read took past its request
                buffered = conn.parser.unreader.take_buffered()
        try:
            conn.sock.setblocking(False)
            while not self._headers_complete(buffered):
                try:
                    chunk = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    conn.header_bytes = buffered
                    return _DEFER  # wait in the poller for more, on no thread
                if not chunk:
                    break  # closed: the parser reports what it makes of the rest
                buffered += chunk
        except OSError:
            return False
        conn.header_bytes = None
        conn.data_ready = True  # no wait for a first byte in gunicorn's handle
        if buffered:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(buffered)
        elif not conn.initialized:
            return False  # closed before sending anything
        return super().handle(conn)

    def _headers_complete(self, data: bytes) -> bool:
        return (
            b"\r\n\r\n" in data
            or b"\n\n" in data
            or len(data) > _header_bytes_limit(self.cfg)
            # an HTTP/2 preface or other non-HTTP/1 start: let gunicorn decide
            or data.startswith(b"PRI ")
        )

    def murder_pending(self) -> None:
        """Close the connections waiting for (the rest of) their headers whose keepalive
        timeout or header deadline has passed. gunicorn's own version stops at the first
        one not yet due, as its deadlines come in order; these do not."""
        now = time.monotonic()
        for conn in list(self.pending_conns):
            deadline = min(conn.timeout, getattr(conn, "header_deadline", conn.timeout))
            if deadline > now:
                continue
            self.pending_conns.remove(conn)
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            if getattr(conn, "header_bytes", None):
                self.log.info(
                    "Closing connection from %s: headers not complete within %s s",
                    conn.client,
                    header_timeout,
                )
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
