"""How ``stablemotion serve`` runs the web app with uvicorn: the connection limits.

The app (:func:`stablemotion.app.create_app`) bounds what a request may cost once it has
arrived (admission before the body is read, body timeouts, body size). What happens before
a request reaches it is the server's: :func:`server_options` gives the ``uvicorn.run``
keywords that enforce the app's :class:`~stablemotion.app.AppLimits`:

* ``max_connections``: open connections (idle keep-alive ones included); a request on a
  connection beyond the cap is answered 503 (uvicorn's ``limit_concurrency``);
* ``header_timeout``: a connection must deliver a request's line and headers within that
  many seconds of opening (or of the previous response); otherwise it is closed. uvicorn
  itself waits for ever, so a client that opens connections and sends nothing -- or a few
  bytes now and then -- would hold them, and with them the connection cap;
* keep-alive: an idle connection is closed after :data:`KEEP_ALIVE` seconds.

Example:
    >>> import uvicorn  # doctest: +SKIP
    >>> app = create_app()  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=7860, **server_options(app))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["KEEP_ALIVE", "HeaderTimeoutProtocol", "server_options"]

log = logging.getLogger(__name__)

#: Seconds an idle keep-alive connection is kept open (uvicorn's ``timeout_keep_alive``).
KEEP_ALIVE = 5


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections that do not deliver a request's headers in time.

    The timer starts when the connection opens and again after each response; when it fires
    and no request is being served (its headers never completed), the connection is closed.
    Subclassed per server by :func:`server_options` with its ``header_timeout``.
    """

    header_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        serving = self.cycle is not None and not self.cycle.response_complete
        if serving or self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]} " if self.client else ""
        log.info("%sclosed: no request headers within %g s", client, self.header_timeout)
        self.transport.close()


def server_options(app: Any) -> dict[str, Any]:
    """``uvicorn.run`` / ``uvicorn.Config`` keywords enforcing ``app``'s connection limits (``app.state.limits``)."""
    limits = app.state.limits
    protocol = type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": limits.header_timeout})
    # uvicorn refuses a request when the connections (its own included) reach limit_concurrency
    return {"http": protocol, "limit_concurrency": limits.max_connections + 1, "timeout_keep_alive": KEEP_ALIVE}
