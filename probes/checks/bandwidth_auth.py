"""Short-lived tokens that let one Netring member run a bandwidth test against another.

The member endpoint's ``/bandwidth_test`` moves up to ``NETRING_BANDWIDTH_MAX_MB`` per request,
so it must not answer just anyone: that would make every member a traffic source for whoever
can reach it. A token is ``nrb1.<expiry>.<hmac>``, the HMAC-SHA256 under a secret every member
shares of ``"<target instance id>|<expiry>"``. It is

- bound to the target: a token for one member is worthless at another;
- short-lived: the test's duration plus a margin, and a target refuses tokens that claim to
  live longer than ``max_ttl_s`` (a leaked token cannot be minted for next year);
- stateless: the target needs no database or broker to check it.

A token can be replayed against the same target until it expires; the endpoint serves one test
at a time and every test is bounded in size and duration, so a replay costs at most one test.

No Django import: the edge's settings give the secret (see ``derive_secret``).
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "nrb1"
DEFAULT_MAX_TTL_S = 600


def derive_secret(secret_key: str, explicit: str = "") -> bytes:
    """The signing key: ``explicit`` (NETRING_BANDWIDTH_SECRET) when set, else one derived from
    Django's secret key, so the two are never the same bytes."""
    if explicit:
        return explicit.encode()
    return hmac.new(secret_key.encode(), b"netring bandwidth test tokens", hashlib.sha256).digest()


def _mac(secret: bytes, instance_id: str, expires_at: int) -> str:
    return hmac.new(secret, f"{instance_id.lower()}|{expires_at}".encode(), hashlib.sha256).hexdigest()


def sign(secret: bytes, instance_id: str, expires_at: float) -> str:
    """A token for a test against member ``instance_id``, valid until ``expires_at`` (epoch s)."""
    expiry = int(expires_at)
    return f"{PREFIX}.{expiry}.{_mac(secret, instance_id, expiry)}"


def verify(
    secret: bytes, token: str | None, instance_id: str, now: float, max_ttl_s: float = DEFAULT_MAX_TTL_S
) -> bool:
    """Whether ``token`` allows a test against ``instance_id`` at time ``now``."""
    if not token:
        return False
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1].isdigit():
        return False
    expiry = int(parts[1])
    if not now <= expiry <= now + max_ttl_s:
        return False
    return hmac.compare_digest(parts[2], _mac(secret, instance_id, expiry))
