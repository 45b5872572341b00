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
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class HttpConnectionError(Exception):
    """The connection was refused, reset or closed before a full answer arrived."""


class HttpProtocolError(Exception):
    """The peer sent something that is not a valid HTTP/1.1 response."""


class Response:
    """An answer: status, the headers a replay reads (lower-case names), body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    host_header: str
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> "Target":
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"expected an http(s)://host:port/path URL, got {url!r}")
        port = u.port or (443 if u.scheme == "https" else 80)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        return cls(u.hostname, port, path, f"{u.hostname}:{port}", u.scheme == "https")


def tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying TLS client context: the system's CAs, or ``ca_file`` (a private CA)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def build_request(target: Target, body: bytes, headers: dict[str, str]) -> bytes:
    """The bytes of one POST request with a Content-Length body."""
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {target.host_header}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_HEADER = re.compile(rb"\r\n(content-length|transfer-encoding|connection|x-request-id):[ \t]*([^\r]*)", re.I)


class _ResponseParser:
    """Incremental parser for one response at a time; reads only the headers a replay needs."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def parse(self) -> Response | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[: end + 2])
        if not head.startswith(b"HTTP/1.") or len(head) < 12 or not head[9:12].isdigit():
            raise HttpProtocolError(f"bad status line {head[:100]!r}")
        headers = {m.group(1).lower().decode(): m.group(2).decode("latin-1").strip() for m in _HEADER.finditer(head)}
        start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, consumed = self._chunked(start)
            if body is None:
                return None
        else:
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError as e:
                raise HttpProtocolError(f"bad Content-Length {headers.get('content-length')!r}") from e
            if len(buf) - start < length:
                return None
            body, consumed = bytes(buf[start : start + length]), start + length
        del buf[:consumed]
        return Response(int(head[9:12]), headers, body)

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
                if trailer_end < 0:
                    return None, 0
                return bytes(out), trailer_end + 4
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


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


class Connection:
    """One keep-alive connection; reconnects after a close, a timeout or a protocol error."""

    def __init__(self, target: Target, tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.tls = tls if tls is not None or not target.tls else tls_context()
        self._proto: _Protocol | None = None
        self.deadline: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def _check(self, period: float) -> None:
        loop = asyncio.get_running_loop()
        proto = self._proto
        if self.deadline is not None and loop.time() >= self.deadline and proto and proto.waiter:
            _expire(proto.waiter)
        self._watchdog = loop.call_later(period, self._check, period) if self._proto is not None else None

    async def _ensure(self) -> _Protocol:
        if self._proto is None or self._proto.closed:
            loop = asyncio.get_running_loop()
            try:
                _, proto = await loop.create_connection(
                    _Protocol, self.target.host, self.target.port, ssl=self.tls,
                    server_hostname=self.target.host if self.tls else None)
            except ssl.SSLError as e:
                raise HttpConnectionError(f"TLS handshake with {self.target.host_header} failed: {e}") from e
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
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._ensure()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        proto.waiter = fut
        # One watchdog per connection instead of a timer per request (asyncio.wait_for or
        # call_later cost more per request than this client is allowed to spend).
        self.deadline = loop.time() + timeout_s
        if self._watchdog is None:
            self._watchdog = loop.call_later(min(timeout_s, 1.0), self._check, min(timeout_s, 1.0))
        proto.transport.write(raw)
        try:
            resp = await fut
        except BaseException:
            self.close()
            raise
        finally:
            self.deadline = None
            proto.waiter = None
        if resp.headers.get("connection", "").lower() == "close":
            self.close()
        return resp

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
