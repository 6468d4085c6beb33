"""Slow clients against gunicorn reached directly (no proxy in front): connections that send
their headers one line a second must neither hold the worker's threads nor stay open past the
header deadline (GUNICORN_HEADER_TIMEOUT, deploy/gunicorn_worker.py)."""

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

SLOW_CLIENTS = 8  # twice the fixture's GUNICORN_THREADS
HEADER_TIMEOUT = 3


@pytest.fixture
def server(gunicorn_factory, monkeypatch):
    monkeypatch.setenv("GUNICORN_HEADER_TIMEOUT", str(HEADER_TIMEOUT))
    base = gunicorn_factory()
    parts = urlsplit(base)
    return base, (parts.hostname, parts.port)


def closed_by_server(sock: socket.socket, until: float) -> bool:
    """Whether the server closes `sock` (EOF or reset) before the monotonic time `until`."""
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(4096):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_slow_header_senders_neither_stall_requests_nor_stay_open(server):
    base, address = server
    slow = [socket.create_connection(address) for _ in range(SLOW_CLIENTS)]
    opened = time.monotonic()
    stop = threading.Event()

    def drip() -> None:  # a header line a second, never the blank line that ends them
        line = 0
        while not stop.wait(1):
            line += 1
            for s in slow:
                with contextlib.suppress(OSError):
                    s.sendall(f"X-Slow-{line}: 1\r\n".encode())

    for s in slow:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        time.sleep(1.5)  # every slow connection has been accepted and sent a header line
        started = time.monotonic()
        try:
            response = httpx.get(f"{base}/healthz", timeout=5)
        except httpx.TimeoutException:
            pytest.fail(f"/healthz stalled behind {SLOW_CLIENTS} slow clients (timed out)")
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert elapsed < 1.0, f"/healthz took {elapsed:.2f} s behind slow clients"
        # The deadline closes them (checked once a second by the worker's main loop).
        until = opened + HEADER_TIMEOUT + 2.5
        still_open = [s for s in slow if not closed_by_server(s, until)]
        assert not still_open, f"{len(still_open)} slow connections outlived the deadline"
        assert time.monotonic() - opened > HEADER_TIMEOUT - 0.5  # not closed early
    finally:
        stop.set()
        dripper.join()
        for s in slow:
            s.close()


def test_headers_in_pieces_and_kept_alive_connections_still_work(server):
    """A request whose headers arrive in pieces (within the deadline) is served, and so is
    the next request on the same kept-alive connection."""
    _, address = server
    with socket.create_connection(address, timeout=5) as s:
        for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"Accept: */*\r\n"):
            s.sendall(piece)
            time.sleep(0.3)
        s.sendall(b"\r\n")
        first = read_response(s)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        # Two pipelined requests in one write, the second one closing the connection.
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
        assert rest.count(b"HTTP/1.1 200") == 2, rest[:400]


def read_response(s: socket.socket) -> bytes:
    """One response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body
