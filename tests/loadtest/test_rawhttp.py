"""The keep-alive HTTP/1.1 client of the load users, against a real local HTTP server (http.server)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from accelserve.loadtest import rawhttp


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set[int] = set()

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        Handler.connections.add(id(self.connection))
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (body[:3], body[3:]):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
            return
        status = 404 if self.path == "/missing" else 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) + 1))
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        if self.path == "/drop":  # keep-alive announced, but the server closes afterwards (an idle timeout)
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body + b"!")


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    Handler.connections = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def post(host: str, port: int, path: str, body: bytes) -> bytes:
    return rawhttp.message(host, port, path, {"Content-Type": "application/octet-stream"}, body)


def test_keep_alive_reuses_one_connection(server) -> None:
    conn = rawhttp.Connection(*server)
    for i in range(20):
        r = conn.request(post(*server, "/infer", b"x" * i))
        assert (r.status, r.body) == (200, b"x" * i + b"!")
    assert len(Handler.connections) == 1
    conn.close()


def test_status_chunked_and_connection_close(server) -> None:
    conn = rawhttp.Connection(*server)
    assert conn.request(post(*server, "/missing", b"a")).status == 404
    assert conn.request(post(*server, "/chunked", b"abcdef")).body == b"abcdef"
    r = conn.request(post(*server, "/close", b"q"))
    assert r.body == b"q!" and conn.sock is None  # closed as the server asked
    assert conn.request(post(*server, "/infer", b"z")).body == b"z!"  # reopened
    conn.close()


def test_a_connection_the_server_dropped_is_reopened(server) -> None:
    conn = rawhttp.Connection(*server)
    assert conn.request(post(*server, "/drop", b"1")).status == 200
    assert conn.sock is not None  # the client does not know yet
    time.sleep(0.2)
    assert conn.request(post(*server, "/infer", b"2")).body == b"2!"
    assert len(Handler.connections) == 2


def test_a_server_that_is_not_http_is_an_error() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def answer() -> None:
        c, _ = listener.accept()
        c.recv(1000)
        c.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")
        c.close()

    threading.Thread(target=answer, daemon=True).start()
    conn = rawhttp.Connection("127.0.0.1", port)
    with pytest.raises(rawhttp.HttpError, match="not an HTTP/1.x response"):
        conn.request(post("127.0.0.1", port, "/", b""))
    assert conn.sock is None
    listener.close()
