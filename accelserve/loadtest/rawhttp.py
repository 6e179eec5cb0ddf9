"""A minimal HTTP/1.1 keep-alive client for pre-encoded requests: the cheapest way to send from Python.

Each request is one ``sendall`` of bytes prepared once (request line, headers and body: see :func:`message`),
and the response is read into a buffer and split by ``Content-Length`` (chunked bodies and bodies ended by
close are handled too). Measured against Triton on a trivial model it costs about half the client CPU per request
of geventhttpclient's ``HTTPClient`` (docs/benchmarks.md, "Load-generator fidelity"), which matters because a
Python load generator's per-request cost adds to every measured latency at low concurrency.

Blocking sockets; in a gevent-patched process (the load processes) they cooperate with gevent. A connection the
server closed while idle is reopened, and a request that got no byte of answer on a reused connection is sent
once more on a fresh one (what browsers and HTTP libraries do for a stale keep-alive connection).
"""

from __future__ import annotations

import socket

#: bytes read per recv
READ_SIZE = 65536
#: largest response head accepted
MAX_HEAD = 65536


class HttpError(OSError):
    """The connection failed or the server's answer is not HTTP/1.x."""


def message(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The whole POST request as bytes (sent as is for every request)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class Connection:
    """One keep-alive connection to ``host:port`` (opened on first use, reopened when the server closes it)."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 5.0, timeout: float = 30.0) -> None:
        self.host, self.port = host, port
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.reused = False

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        self.sock, self.buf, self.reused = sock, b"", False
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buf = b""

    def request(self, data: bytes) -> Response:
        """Send one pre-encoded request and read its response."""
        sock = self.sock or self._connect()
        reused = self.reused
        try:
            try:
                sock.sendall(data)
                return self._read_response(sock)
            except (_StaleConnection, BrokenPipeError):
                self.close()
                if not reused:
                    raise
                sock = self._connect()
                sock.sendall(data)
                return self._read_response(sock)
        except _StaleConnection:
            self.close()
            raise HttpError("the server closed the connection before answering") from None
        except BaseException:
            self.close()
            raise

    def _recv(self, sock: socket.socket) -> bytes:
        chunk = sock.recv(READ_SIZE)
        if not chunk:
            raise HttpError("the server closed the connection mid-response")
        return chunk

    def _read_response(self, sock: socket.socket) -> Response:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            try:
                chunk = sock.recv(READ_SIZE)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if not buf:
                    raise _StaleConnection
                raise HttpError("the server closed the connection mid-response")
            buf += chunk
            if len(buf) > MAX_HEAD and buf.find(b"\r\n\r\n") < 0:
                raise HttpError("response head larger than 64 KiB")
            end = buf.find(b"\r\n\r\n")
        head = buf[:end].decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP/1.x response: {head[0][:80]!r}")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        buf = buf[end + 4:]
        length = headers.get("content-length")
        if length is not None:
            n = int(length)
            while len(buf) < n:
                buf += self._recv(sock)
            body, buf = buf[:n], buf[n:]
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, buf = self._read_chunked(sock, buf)
        else:  # the body ends when the server closes
            parts_ = [buf]
            while chunk := sock.recv(READ_SIZE):
                parts_.append(chunk)
            body, buf = b"".join(parts_), b""
            headers["connection"] = "close"
        self.buf = buf
        if headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0":
            self.close()
        else:
            self.reused = True
        return Response(int(parts[1]), headers, body)

    def _read_chunked(self, sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
        out = []
        while True:
            while (i := buf.find(b"\r\n")) < 0:
                buf += self._recv(sock)
            size = int(buf[:i].split(b";", 1)[0], 16)
            buf = buf[i + 2:]
            if size == 0:
                while (j := buf.find(b"\r\n")) != 0:  # trailers until an empty line
                    if j < 0:
                        buf += self._recv(sock)
                    else:
                        buf = buf[j + 2:]
                return b"".join(out), buf[2:]
            while len(buf) < size + 2:
                buf += self._recv(sock)
            out.append(buf[:size])
            buf = buf[size + 2:]


class _StaleConnection(Exception):
    """No byte of answer arrived: the server had closed the (reused) connection."""
