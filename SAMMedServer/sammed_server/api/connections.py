"""Connection limits below the ASGI app (uvicorn's h11 protocol, extended): a request's headers must arrive
within ``header_timeout_s`` of its first byte, its body may not stall for more than ``body_timeout_s``, and one
client address holds at most ``max_per_client`` connections. A slow or stuck client is disconnected; its
half-read request is dropped (the app sees a disconnect), so it holds no thread and no buffered body.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_per_client: int = 64


def limited_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """An ``H11Protocol`` class (for ``uvicorn.Config(http=...)``) enforcing ``limits``."""
    open_by_client: Counter[str] = Counter()
    busy = json.dumps({"error": {"code": "too_many_connections", "field": None,
                                 "message": f"more than {limits.max_per_client} open connections from this client",
                                 "hint": "reuse keep-alive connections"}}).encode()

    class LimitedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read_timer: Optional[asyncio.TimerHandle] = None
            self._reading_headers = False
            self._peer = ""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else ""
            open_by_client[self._peer] += 1
            if open_by_client[self._peer] > limits.max_per_client:
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(busy), busy))
                transport.close()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            open_by_client[self._peer] -= 1
            if open_by_client[self._peer] <= 0:
                del open_by_client[self._peer]
            self._stop_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            """Header deadline from a request's first byte; body deadline renewed by every chunk."""
            if self.transport is None or self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.IDLE and self.conn.trailing_data[0]:
                if not self._reading_headers:  # a request has begun: its headers must be complete in time
                    self._reading_headers = True
                    self._start_timer(limits.header_timeout_s)
                return
            self._reading_headers = False
            if state is h11.SEND_BODY:
                self._start_timer(limits.body_timeout_s)
            else:
                self._stop_timer()

        def _start_timer(self, seconds: float) -> None:
            self._stop_timer()
            self._read_timer = self.loop.call_later(seconds, self._too_slow)

        def _stop_timer(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _too_slow(self) -> None:
            self._read_timer = None
            if self.flow.read_paused and self.conn.their_state is h11.SEND_BODY:
                self._start_timer(limits.body_timeout_s)  # the app is not reading yet: not the client's fault
                return
            if not self.transport.is_closing():
                self.logger.info("closing a connection from %s: request not received in time", self._peer)
                self.transport.close()

    return LimitedH11Protocol
