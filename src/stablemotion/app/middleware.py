"""The app's ASGI middleware: body size and timing, the Host check and the Origin check.

* :class:`_BodyLimit`: a request body over the limit (declared or streamed) gets 413.
* :class:`_BodyGuard`: the whole body must arrive within ``total`` seconds with no gap over
  ``idle`` seconds (else 408, connection closed); a client gone mid-upload is logged in one line.
* :class:`_HostCheck` (DNS rebinding): only requests whose ``Host`` (without the port) is
  allowed are answered; others get 400 with a one-line message. :func:`allowed_hosts_for`
  gives the allowed names for a bind address (``stablemotion serve``'s rule); ``*`` turns
  the check off (behind a reverse proxy that checks the host itself).
* :class:`_OriginCheck` (cross-site requests): for methods other than GET/HEAD/OPTIONS, the
  page named by ``Origin`` (or ``Referer``) must have an allowed host (with ``*``, the
  request's own ``Host``); ``Origin: null`` is refused; 403. Requests with neither header
  (curl, scripts) are served. The app sends no CORS headers.

:func:`add_guards` installs them in the order they must run.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import urllib.parse
from collections.abc import Sequence

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import _InputError, _mb

__all__ = ["LOOPBACK_HOSTS", "SAFE_METHODS", "add_guards", "allowed_hosts_for", "normalise_host"]

log = logging.getLogger(__name__)

#: Host names always allowed when the server listens on a loopback or wildcard address.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


# --------------------------------------------------------------------------- request body limit
class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request is larger than {_mb(self.limit)}; upload smaller files"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:  # a streamed (chunked) body: stop reading it
                raise _InputError(message, 413)
            return msg

        await self.app(scope, limited, send)


class _BodyGuard:
    """ASGI middleware: a request body must arrive in time; a client gone mid-upload is logged in one line.

    The whole body must arrive within ``total`` seconds of the request's headers, with no gap
    over ``idle`` seconds; otherwise the app answers 408 and closes the connection (a stalled
    upload would otherwise hold its queue slot and its buffers for ever). Once the body is
    complete, ``receive`` is passed through untimed (responses listen on it for a disconnect).
    """

    def __init__(self, app: ASGIApp, total: float, idle: float) -> None:
        self.app, self.total, self.idle = app, total, idle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total
        done = False

        async def timed() -> Message:
            nonlocal done
            if done:
                return await receive()
            left = deadline - loop.time()
            wait = min(left, self.idle)
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                msg = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:  # TimeoutError from Python 3.11
                what = f"within {self.total:g} s" if left <= self.idle else f"for {self.idle:g} s"
                raise _InputError(f"the upload stalled: the request body did not arrive {what}; try again",
                                  408, headers={"Connection": "close"}) from None
            done = msg["type"] != "http.request" or not msg.get("more_body", False)
            return msg

        try:
            await self.app(scope, timed, send)
        except ClientDisconnect:  # nobody is left to answer: one line, not a traceback
            client = scope.get("client") or ("?", 0)
            log.info("client %s:%s disconnected during %s %s", client[0], client[1], scope["method"], scope["path"])


# --------------------------------------------------------------------------- Host check
def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def normalise_host(value: str, what: str = "allowed host") -> str:
    """A host name or address as the Host check compares it: lower case, no brackets, no trailing dot.

    ``*`` (any host) passes through. Raises ``ValueError`` for a scheme, port, path or
    anything else that is not a bare name or address.

    Example:
        >>> normalise_host("App.Example."), normalise_host("[::1]"), normalise_host("*")
        ('app.example', '::1', '*')
        >>> normalise_host("app.example:8080")
        Traceback (most recent call last):
        ValueError: allowed host 'app.example:8080' must be a host name or address without scheme or port (e.g. app.example or 192.168.1.5)
    """
    v = value.strip().lower()
    if v == "*":
        return v
    if v.startswith("[") and v.endswith("]"):
        v = v[1:-1]
        if ":" not in v or not _is_ip(v):
            raise ValueError(f"{what} {value!r} is not an IPv6 address in brackets (e.g. [::1])")
        return v
    if ":" in v and not _is_ip(v):
        raise ValueError(f"{what} {value!r} must be a host name or address without scheme or port "
                         "(e.g. app.example or 192.168.1.5)")
    v = v.rstrip(".")
    if not v or any(c in v for c in "/@ \t?#[]"):
        raise ValueError(f"{what} {value!r} must be a host name or address without scheme, port or path "
                         "(e.g. app.example or 192.168.1.5)")
    return v


def allowed_hosts_for(bind_host: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``Host`` names the app answers to when it listens on ``bind_host`` (``serve``'s rule).

    * a loopback address (``127.0.0.1``, ``::1``, ``localhost``): that address and
      ``localhost``, ``127.0.0.1``, ``::1``;
    * a wildcard (``0.0.0.0``, ``::``): ``localhost``, ``127.0.0.1``, ``::1`` only (the
      server's own names and addresses are not known: list them in ``extra``);
    * any other address or name: that one only;

    plus ``extra`` (``--allowed-hosts``). ``*`` in ``extra`` allows any host.

    Example:
        >>> allowed_hosts_for("127.0.0.1")
        ['127.0.0.1', 'localhost', '::1']
        >>> allowed_hosts_for("0.0.0.0", ["gpu-box.lan", "192.168.1.20"])
        ['127.0.0.1', 'localhost', '::1', 'gpu-box.lan', '192.168.1.20']
        >>> allowed_hosts_for("192.168.1.20")
        ['192.168.1.20']
    """
    bind = normalise_host(bind_host, "--host")
    hosts: list[str] = []
    if bind in ("0.0.0.0", "::"):
        hosts += LOOPBACK_HOSTS
    elif bind == "localhost" or (_is_ip(bind) and ipaddress.ip_address(bind).is_loopback):
        hosts += [bind, *LOOPBACK_HOSTS]
    else:
        hosts.append(bind)
    hosts += [normalise_host(h) for h in extra]
    return list(dict.fromkeys(hosts))


def _request_host(header: bytes | None) -> str | None:
    """The host part of a ``Host`` header (port and IPv6 brackets removed, lower case), or None."""
    if not header:
        return None
    value = header.decode("latin-1").strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else None
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".") or None


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _HostCheck:
    """ASGI middleware: answer only requests whose ``Host`` is allowed; others get 400 (DNS rebinding)."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = frozenset(hosts)
        self.any = "*" in self.hosts
        self.listed = ", ".join(_shown_host(h) for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"host")
        host = _request_host(raw)
        if host in self.hosts:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if host is None:
            message = f"the request has no valid Host header; this server answers to {self.listed}"
        else:
            name = _shown_host(host)[:100]
            message = (f"this server does not answer to the host name {name!r} (it answers to {self.listed}); "
                       f"if that is how you reach it, start it with --allowed-hosts {name}")
        await JSONResponse({"detail": message}, status_code=400)(scope, receive, send)


#: Methods that change nothing: not subject to the Origin check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _origin_host(value: str) -> str | None:
    """The host of an ``Origin`` or ``Referer`` value (an http(s) URL) as the Host check compares it, or None."""
    try:
        parts = urllib.parse.urlsplit(value.strip())
        host = parts.hostname  # lower case, IPv6 brackets removed
        _ = parts.port  # a malformed port raises ValueError
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None  # "null" (sandboxed pages, file:// pages), other schemes
    return host.rstrip(".")


class _OriginCheck:
    """ASGI middleware: refuse state-changing requests sent by pages of other sites (cross-site request forgery).

    A browser names the page that sent a request in ``Origin`` (or, on older browsers, only in
    ``Referer``). For methods other than GET/HEAD/OPTIONS, that page's host must be one the
    app answers to (``hosts``; with ``*``, the request's own ``Host``); ``Origin: null`` is
    refused. Requests with neither header (curl, scripts) are not from a page and pass. No
    CORS headers are ever sent, so other sites cannot read any answer either.
    """

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = frozenset(hosts)
        self.any = "*" in self.hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin, referer = headers.get(b"origin"), headers.get(b"referer")
        if origin is None and referer is None:
            await self.app(scope, receive, send)
            return
        name, raw = ("Origin", origin) if origin is not None else ("Referer", referer)
        value = (raw or b"").decode("latin-1").strip()
        host = _origin_host(value)
        allowed = self.hosts if not self.any else {_request_host(headers.get(b"host"))}
        if host is not None and host in allowed:
            await self.app(scope, receive, send)
            return
        message = (f"cross-origin request refused: it was sent by the page {value[:100]!r} ({name} header), "
                   "not by this app's own page; open the app at its own address")
        await JSONResponse({"detail": message}, status_code=403)(scope, receive, send)


def add_guards(app: FastAPI, hosts: Sequence[str], max_body: int, body_timeout: float, body_idle_timeout: float) -> None:
    """Install the middleware on ``app``; a request meets them in this order: the body's timing
    (:class:`_BodyGuard`), the Host check, the Origin check, the body's size (``max_body`` bytes)."""
    app.add_middleware(_BodyLimit, limit=max_body)
    app.add_middleware(_OriginCheck, hosts=hosts)
    app.add_middleware(_HostCheck, hosts=hosts)
    app.add_middleware(_BodyGuard, total=body_timeout, idle=body_idle_timeout)  # added last: runs first
