"""Member tokens. No Django import.

A member token is ``nrm_<instance id hex>_<secret>``. Carrying the instance id lets the
registry find the member with its primary key and compare one hash in the same statement that
records the heartbeat: authentication and the write are one indexed UPDATE.
Only the SHA-256 of the secret is stored; the secret has 256 bits, so a fast hash is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

PREFIX = "nrm"


@dataclass(frozen=True)
class MemberToken:
    instance_id: uuid.UUID
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}_{self.instance_id.hex}_{self.secret}"

    @property
    def hash(self) -> str:
        return hash_secret(self.secret)


def new_token(instance_id: uuid.UUID) -> MemberToken:
    return MemberToken(instance_id, secrets.token_urlsafe(32))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(raw: str) -> MemberToken | None:
    """The token in ``raw``, or None when ``raw`` is not shaped like a member token."""
    prefix, _, rest = raw.partition("_")
    instance_hex, _, secret = rest.partition("_")
    if prefix != PREFIX or len(instance_hex) != 32 or not 20 <= len(secret) <= 128:
        return None
    try:
        return MemberToken(uuid.UUID(hex=instance_hex), secret)
    except ValueError:
        return None


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
