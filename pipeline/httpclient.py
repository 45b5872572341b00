"""A minimal HTTP/1.1 keep-alive client on asyncio.Protocol, built to measure the server.

General clients cost more per request than the server spends on a small model: on the
2-core reference machine a ``requests.Session`` loop measured a p50 about three times the
server's, and aiohttp about 20% above a bare ``http.client`` loop. This client writes
pre-built request bytes on a persistent connection and parses only what a replay needs
(status, ``Content-Length`` or chunked body, ``x-request-id``), so its own share of each
measured latency stays small. One connection carries one request at a time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit


class HttpConnectionError(Exception):
    """The connection was refused, reset or closed before a full answer arrived."""


class HttpProtocolError(Exception):
    """The peer sent something that is not a valid HTTP/1.1 response."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    host_header: str

    @classmethod
    def from_url(cls, url: str) -> "Target":
        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"expected an http://host:port/path URL, got {url!r}")
        port = u.port or 80
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        return cls(u.hostname, port, path, f"{u.hostname}:{port}")


def build_request(target: Target, body: bytes, headers: dict[str, str]) -> bytes:
    """The bytes of one POST request with a Content-Length body."""
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {target.host_header}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _ResponseParser:
    """Incremental parser for one response at a time."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def parse(self) -> Response | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpProtocolError(f"bad status line {head[0][:100]!r}")
        headers = {}
        for line in head[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, consumed = self._chunked(start)
            if body is None:
                return None
        else:
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buf) - start < length:
                return None
            body, consumed = bytes(self.buf[start : start + length]), start + length
        del self.buf[:consumed]
        return Response(int(parts[1]), headers, body)

    def _chunked(self, pos: int) -> tuple[bytes | None, int]:
        out = bytearray()
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return None, 0
            try:
                size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
            except ValueError as e:
                raise HttpProtocolError("bad chunk size") from e
            if size == 0:
                trailer_end = self.buf.find(b"\r\n\r\n", eol)
                if trailer_end < 0 and self.buf[eol : eol + 4] != b"\r\n\r\n":
                    return None, 0
                return bytes(out), (trailer_end + 4 if trailer_end >= 0 else eol + 4)
            if len(self.buf) < eol + 2 + size + 2:
                return None, 0
            out += self.buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = _ResponseParser()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.buf += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            resp = self.parser.parse()
        except HttpProtocolError as e:
            self.waiter.set_exception(e)
            return
        if resp is not None:
            self.waiter.set_result(resp)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpConnectionError(f"connection closed by the server ({exc or 'EOF'})"))


class Connection:
    """One keep-alive connection; reconnects after a close, a timeout or a protocol error."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._proto: _Protocol | None = None

    async def _ensure(self) -> _Protocol:
        if self._proto is None or self._proto.closed:
            loop = asyncio.get_running_loop()
            try:
                _, proto = await loop.create_connection(_Protocol, self.target.host, self.target.port)
            except OSError as e:
                raise HttpConnectionError(f"cannot connect to {self.target.host_header}: {e.strerror or e}") from e
            self._proto = proto
        return self._proto

    async def request(self, raw: bytes, timeout_s: float) -> Response:
        """Send pre-built request bytes and wait for the whole answer.

        Raises:
            HttpConnectionError: refused, reset or closed.
            HttpProtocolError: not an HTTP/1.1 answer.
            asyncio.TimeoutError: no full answer within ``timeout_s``.
        """
        proto = await self._ensure()
        fut = asyncio.get_running_loop().create_future()
        proto.waiter = fut
        proto.transport.write(raw)
        try:
            resp = await asyncio.wait_for(fut, timeout_s)
        except BaseException:
            self.close()
            raise
        finally:
            proto.waiter = None
        if resp.headers.get("connection", "").lower() == "close":
            self.close()
        return resp

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
