"""Probe mechanics: TCP, HTTP and ICMP checks that share one result shape.

Nothing here imports Django, so every module is tested on its own against real sockets on
loopback; tasks and services call these functions and store what they return.

Modules:

- ``result``: ``CheckResult``, the one shape every check returns.
- ``tcp``: a plain non-blocking connect, timed on the monotonic clock.
- ``http``: pycurl set-up, phase timings, error classes, expected statuses, ``run_many``.
- ``curlmulti``: one ``CurlMulti`` driven through libcurl's socket API on epoll.
- ``icmp``: pings with loss and jitter, and what privilege we have to send them.
- ``pinger``: many hosts' echoes through one icmplib socket, timed by the kernel.
- ``mesh``: every check against every target of a round, concurrently.
- ``bandwidth``: duration-based tests with the warm-up left out, and the endpoint serving them.
- ``bandwidth_auth``: short-lived tokens that let one member test another.
- ``pairing``: the round-robin schedule that keeps every member in one bandwidth test at a time.
- ``traceroute``: concurrent traces with silent hops, added latency and path fingerprints.
- ``pathwatch``: which differences between traces of a pair are path changes.
"""
