"""One pycurl ``CurlMulti`` driven through libcurl's socket API on epoll.

Why not ``CurlMulti.select()``: it is built on ``select(2)``, which cannot watch a file
descriptor numbered 1024 or more. libcurl silently leaves such sockets out, and their events
are then noticed late, which inflates the measured timings in a busy process. The socket API
has no such limit and does work only for the sockets that are ready.

Used from one thread only.
"""

from __future__ import annotations

import selectors
import time
from types import TracebackType
from typing import Any

import pycurl

# A finished transfer: the handle, curl's error code (0 = transfer completed) and message.
Finished = tuple[Any, int, str]


class MultiDriver:
    """Adds Curl handles to one multi and reports them when they finish."""

    def __init__(self) -> None:
        self._multi = pycurl.CurlMulti()
        self._selector = selectors.DefaultSelector()
        self._timer_deadline: float | None = None  # monotonic; when libcurl wants a timeout call
        self._in_flight = 0
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def add(self, curl: Any) -> None:
        """Start a configured handle; it is removed from the multi when :meth:`poll` returns it."""
        self._multi.add_handle(curl)
        self._in_flight += 1

    def poll(self, timeout_s: float) -> list[Finished]:
        """Wait up to ``timeout_s`` for socket activity or a libcurl timer, then return what finished."""
        wait = timeout_s
        if self._timer_deadline is not None:
            wait = min(wait, self._timer_deadline - time.monotonic())
        for key, mask in self._selector.select(max(wait, 0.0)):
            action = (pycurl.CSELECT_IN if mask & selectors.EVENT_READ else 0) | (
                pycurl.CSELECT_OUT if mask & selectors.EVENT_WRITE else 0
            )
            self._multi.socket_action(key.fd, action)
        if self._timer_deadline is not None and time.monotonic() >= self._timer_deadline:
            self._timer_deadline = None
            self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        return self._collect()

    def close(self) -> None:
        # The multi holds our bound methods; closing it breaks that reference cycle.
        self._multi.close()
        self._selector.close()

    def __enter__(self) -> MultiDriver:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _collect(self) -> list[Finished]:
        finished: list[Finished] = []
        while True:
            queued, done, failed = self._multi.info_read()
            finished.extend((curl, 0, "") for curl in done)
            finished.extend((curl, int(code), str(message)) for curl, code, message in failed)
            if not queued:
                break
        for curl, _, _ in finished:
            self._multi.remove_handle(curl)
        self._in_flight -= len(finished)
        return finished

    def _on_socket(self, what: int, fd: int, multi: object, socketp: object) -> None:
        registered = fd in self._selector.get_map()
        events = (selectors.EVENT_READ if what & pycurl.POLL_IN else 0) | (
            selectors.EVENT_WRITE if what & pycurl.POLL_OUT else 0
        )
        if what == pycurl.POLL_REMOVE or not events:
            if registered:
                self._selector.unregister(fd)
            return
        try:
            if registered:
                self._selector.modify(fd, events)
            else:
                self._selector.register(fd, events)
        except OSError:
            # The number was closed and reused before libcurl told us to forget it, so epoll
            # already dropped the old registration; start over with the new socket.
            if fd in self._selector.get_map():
                self._selector.unregister(fd)
            self._selector.register(fd, events)

    def _on_timer(self, timeout_ms: int) -> None:
        # libcurl must not be re-entered from its callbacks: note the deadline, act in poll().
        self._timer_deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0
