"""The dedicated 1 Hz prober: scheduling, transfers, durable spool and batched writes.

Nothing in this package imports Django. ``manage.py run_prober`` wires these pieces to the
database (target list, sink) and to process signals; everything here is tested on its own.

Modules:

- ``ticks``: absolute-deadline tick scheduler and the probe_id allocator.
- ``transport``: the start/poll interface the loop drives, and its result shape.
- ``curl_transport``: that interface on one pycurl ``CurlMulti``.
- ``loop``: the prober loop (targets x ticks -> sample rows).
- ``target_cache``: the last target list loaded, for a start while the database is down.
- ``copy_text``: sample rows in COPY text, the one encoding for the database and the spool.
- ``spool``: append-only, fsync'd local spool for rows the database has not taken yet.
- ``writer``: batching writer that keeps the loop's cadence while the database is down or slow.
- ``sla``: uptime, downtime events and latency percentiles over stored samples.
- ``testing``: deterministic fakes (clock, transport) shared by the tests.
"""
