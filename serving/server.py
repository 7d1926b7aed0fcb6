"""Running the app under uvicorn as a server that faces a network should run.

`serve(settings)` is what `embedserve serve` calls. Beyond uvicorn's defaults it adds:
- a deadline on each request's headers (`header_timeout_s`): uvicorn has none, so a client that
  sends a byte every few seconds (slowloris) would hold a connection and its buffers forever.
  Bodies have their own deadline, and requests theirs, in serving.lifetime;
- a limit on each request's line and headers together (`max_header_bytes`): uvicorn's httptools
  parser has none, and joins a header's pieces as they arrive, so one header of tens of MB took
  seconds of the event loop, every other request waiting. Past the limit the client gets a 431
  and the connection is closed, as the bytes arrive, before more of them are parsed;
- idle keep-alive connections closed after `keep_alive_s`;
- on SIGTERM (what `docker stop` and Kubernetes send): stop accepting, let the requests in
  flight finish (for up to `shutdown_timeout_s`), run the app's shutdown, which lets a running
  job finish its batch and checkpoint (serving.job_worker), then exit with status 0.
"""

from __future__ import annotations

import ctypes
import gc
import json
import signal
import sys
from functools import partial

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.settings import Settings

_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
              b"content-length: 38\r\n\r\nthe request's headers came too slowly\n")


def _too_large(limit: int) -> bytes:
    body = json.dumps({"detail": f"the request line and headers pass {limit:,} bytes, the limit "
                                 "(EMBEDSERVE_MAX_HEADER_BYTES): send fewer or shorter headers",
                       "error": "headers_too_large"}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class HeaderLimitsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), with limits on every request's headers:
    - a deadline, from the connection's start, or from a request's first byte on a kept-alive
      connection, to the end of its headers; past it the client gets a 408;
    - a size: the bytes of its request line and headers, counted as they arrive and handed to the
      parser no further than the limit; past it the client gets a 431.
    Either way the connection is closed."""

    def __init__(self, *args, header_timeout_s: float, max_header_bytes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self._header_deadline = None
        self._header_room: int | None = max_header_bytes  # bytes the headers may still take; None once they ended

    def data_received(self, data: bytes) -> None:
        while self._header_room is not None and data:
            if self.transport.is_closing():
                return
            piece, data = data[:self._header_room], data[self._header_room:]
            self._header_room -= len(piece)
            super().data_received(piece)
            if self._header_room is not None and self._header_room <= 0:  # the limit reached inside the headers
                self._refuse(_too_large(self.max_header_bytes))
                return
        if data and not self.transport.is_closing():
            super().data_received(data)  # a body (or a pipelined request past this chunk's headers: a chunk at most)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._header_room = self.max_header_bytes  # the next request on this connection starts its own count

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # a later request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._header_room = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        self._refuse(_TIMED_OUT)

    def _refuse(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


# glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
MMAP_THRESHOLD_BYTES = 1 << 20
ARENA_MAX = 2


def release_memory_promptly() -> None:
    """Make this process give freed memory back to the system, so its RSS tracks what it holds.

    Left alone, glibc raises its mmap threshold each time a large block is freed, until blocks of
    up to 32 MB (a batch, a decoded image, a job's vectors) come from heaps it never returns, and
    gives each thread that allocates its own arena: under mixed load with jobs, RSS ratchets up
    by tens of MB per job without a leak (bench/soak.py: +9 % in 45 s). A fixed 1 MB threshold and
    two arenas keep it flat (+2 % over the same run) for no measurable speed. The same as setting
    MALLOC_MMAP_THRESHOLD_ and MALLOC_ARENA_MAX; a no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
    except (OSError, AttributeError):
        pass


def freeze_startup_objects() -> None:
    """Set what start-up made (modules, the app, the models' Python objects) aside from the garbage
    collector, which otherwise walks all of it in every full collection: one took 58 ms in a
    server under load, the p99 of one-sentence requests at concurrency 8 (75.7 ms against a
    p50 of 14.9). Objects made later are collected as before; what start-up made stays for the
    process's life anyway. `thaw_startup_objects` hands them back at shut-down (a process that
    starts apps in turn, such as the test suite, then frees the old ones)."""
    gc.freeze()


def thaw_startup_objects() -> None:
    gc.unfreeze()


def _exit_cleanly(signum: int, frame) -> None:
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again for the handler
    # that was there before it: this one, so a graceful stop ends with status 0 (and a SIGTERM
    # before uvicorn started, during start-up, ends the process at once).
    sys.exit(0)


def serve(settings: Settings) -> None:
    import uvicorn

    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run("serving.app:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level=settings.log_level,
                http=partial(HeaderLimitsProtocol, header_timeout_s=settings.header_timeout_s,
                             max_header_bytes=settings.max_header_bytes),
                timeout_keep_alive=settings.keep_alive_s, timeout_graceful_shutdown=settings.shutdown_timeout_s)
