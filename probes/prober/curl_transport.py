"""A :class:`~probes.prober.transport.Transport` on one pycurl ``CurlMulti``.

The probe logic is the mesh checks' (``probes.checks``), not a second copy of it: handles are
set up by :func:`probes.checks.http.configure` (fresh connection and name lookup for every
sample, only http/https, body discarded), phase durations come from
:func:`~probes.checks.http.read_timings`, curl errors are classified by
:func:`~probes.checks.http.classify_curl_error`, and the multi is driven by
:class:`probes.checks.curlmulti.MultiDriver` (libcurl's socket API on epoll, no 1024-fd limit).
What this module adds is the prober's bookkeeping: which tick and source each transfer belongs
to, and transfers that outlive the tick that started them.
"""

from __future__ import annotations

import time
from typing import Any

import pycurl

from probes.checks.curlmulti import MultiDriver
from probes.checks.http import classify_curl_error, configure, read_timings
from probes.prober.transport import ABORTED, Completion, Phases, SampleKey

# See CurlMultiTransport.poll: the final approach to a deadline, in seconds.
_FINE_WAIT = 0.002
_FINE_STEP = 0.0002


def completion_for(handle: Any, key: SampleKey, code: int, message: str) -> Completion:
    """The Completion of the transfer that just finished on ``handle`` (``code`` 0 = completed).

    Whether the status counts as success is not decided here: the loop knows what the target
    expects.
    """
    timings = read_timings(handle, completed=not code)
    status = int(handle.getinfo(pycurl.RESPONSE_CODE)) or None
    error_class = None
    if code:
        error_class = classify_curl_error(code, message, int(handle.getinfo(pycurl.OS_ERRNO)))
    return Completion(
        key=key,
        status=None if code else status,
        error_class=error_class,
        error=(message or f"curl error {code}") if code else None,
        phases=Phases(
            dns_ms=timings.dns_ms,
            connect_ms=timings.connect_ms,
            tls_ms=timings.tls_ms,
            ttfb_ms=timings.ttfb_ms,
            total_ms=timings.total_ms,
        ),
        remote_ip=handle.getinfo(pycurl.PRIMARY_IP) or None,
    )


class CurlMultiTransport:
    """All in-flight samples on one ``CurlMulti``, driven from the prober loop's thread."""

    def __init__(self, *, user_agent: str | None = None) -> None:
        self._driver = MultiDriver()
        self._transfers: dict[Any, SampleKey] = {}  # handle -> sample
        self._user_agent = user_agent

    def start(
        self, key: SampleKey, url: str, timeout: float, *, follow_redirects: bool = False, verify_tls: bool = True
    ) -> None:
        handle = pycurl.Curl()
        try:
            # With redirects followed the phases and status are those of the whole chain (the
            # seed's behaviour); without, the 3xx itself is the answer.
            configure(handle, url, timeout_s=timeout, follow_redirects=follow_redirects, verify_tls=verify_tls)
            if self._user_agent:
                handle.setopt(pycurl.USERAGENT, self._user_agent)
            self._driver.add(handle)
        except Exception:
            handle.close()
            raise
        self._transfers[handle] = key

    def in_flight(self) -> int:
        return len(self._transfers)

    def poll(self, timeout: float) -> list[Completion]:
        # epoll counts its timeout in whole milliseconds rounded up, and the kernel lets a wait
        # of t seconds end up to t/1000 late (timer slack): waited out in one go, the loop's
        # wait for the next tick would start that tick ~1 ms late on average. So epoll waits
        # until shortly before the deadline, and the last stretch goes in short sleeps that
        # still check the sockets in between.
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining > _FINE_WAIT:
                finished = self._driver.poll((remaining - _FINE_WAIT) * 0.999)  # 0.999: the slack
            else:
                finished = self._driver.poll(0)
                if not finished and remaining > 0:
                    time.sleep(min(remaining, _FINE_STEP))
            done = [self._finish(handle, code, message) for handle, code, message in finished]
            if done or time.monotonic() >= deadline:
                return done

    def abort_all(self) -> list[Completion]:
        aborted = [
            Completion(key=key, status=None, error_class=ABORTED, error="prober stopped")
            for key in self._transfers.values()
        ]
        # pycurl takes a handle out of its multi when it is closed; a new driver then starts
        # clean (its in-flight count included), so the transport stays usable.
        for handle in self._transfers:
            handle.close()
        self._transfers.clear()
        self._driver.close()
        self._driver = MultiDriver()
        return aborted

    def close(self) -> None:
        self.abort_all()
        self._driver.close()

    def _finish(self, handle: Any, code: int, message: str) -> Completion:
        key = self._transfers.pop(handle)
        completion = completion_for(handle, key, code, message)
        handle.close()
        return completion
