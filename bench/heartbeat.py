"""Sustained heartbeats per second against the registry as production serves it.

10,000 registered members; the load generator sends heartbeats with randomly chosen member
tokens over keep-alive connections to gunicorn (compose/gunicorn.conf.py). Compared in the
same run with the issue's target (2,000/s = 60,000 members at a 30 s interval).
"""

from __future__ import annotations

import uuid

from bench.common import line, served_web, setup_django
from bench.load import post_tokens

MEMBERS = 10_000
SECONDS = 15
TARGET = 2_000


def _members() -> list[str]:
    from django.utils import timezone

    from members import tokens
    from members.models import Location, Member

    Member.objects.all().delete()
    locations = [Location.objects.get_or_create(name=f"bench{i}")[0] for i in range(20)]
    now = timezone.now()
    issued = []
    rows = []
    for i in range(MEMBERS):
        token = tokens.new_token(uuid.uuid4())
        issued.append(str(token))
        rows.append(
            Member(
                instance_id=token.instance_id,
                location=locations[i % 20],
                ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                port=8757,
                kind=Member.Kind.EDGE,
                token_hash=token.hash,
                registered_at=now,
                last_seen=now,
            )
        )
    Member.objects.bulk_create(rows, batch_size=2000)
    return issued


def main() -> bool:
    print(f"heartbeat: {MEMBERS} members, {SECONDS}s of sustained load", flush=True)
    setup_django()
    from django.utils import timezone

    from members.models import Member
    from netring_site.embedded import free_port

    issued = _members()
    started = timezone.now()
    with served_web(free_port()) as base:
        result = post_tokens(base, "/api/v1/members/heartbeat/", issued, SECONDS)
    touched = Member.objects.filter(last_seen__gte=started).count()
    ok = result.rate >= TARGET and result.failed == 0
    line(
        "POST /api/v1/members/heartbeat/ (" + result.tool + ")",
        f"{result.rate:,.0f} heartbeats/s",
        f"target {TARGET:,}/s",
        "PASS" if ok else "FAIL",
    )
    line("  members supported at 30 s interval", f"{result.rate * 30:,.0f}", f"{TARGET * 30:,}", "")
    line("  latency p50 / p99", f"{result.p50_ms:.1f} / {result.p99_ms:.1f} ms", "", "")
    line("  failed requests", f"{result.failed}", "0", "")
    line("  distinct members whose last_seen moved", f"{touched:,}", f"{MEMBERS:,} registered", "")
    return ok
