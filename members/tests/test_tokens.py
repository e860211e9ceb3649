import hashlib
import uuid

import pytest

from members import tokens

INSTANCE = uuid.UUID("3f2b8c1e-6a4d-4e1f-9b7a-0c5d2e8f1a94")
SECRET = "s3cr3t-with_underscores_and-dashes-0123456789"


def test_it_renders_prefix_instance_hex_and_secret() -> None:
    token = tokens.MemberToken(INSTANCE, SECRET)
    assert str(token) == f"nrm_{INSTANCE.hex}_{SECRET}"


def test_it_parses_what_it_renders_even_with_underscores_in_the_secret() -> None:
    token = tokens.MemberToken(INSTANCE, SECRET)
    assert tokens.parse(str(token)) == token


def test_it_makes_a_fresh_secret_each_time() -> None:
    first, second = tokens.new_token(INSTANCE), tokens.new_token(INSTANCE)
    assert first.instance_id == second.instance_id == INSTANCE
    assert first.secret != second.secret
    assert len(first.secret) >= 40  # 32 random bytes, url-safe base64
    assert tokens.parse(str(first)) == first


def test_it_stores_only_the_sha256_of_the_secret() -> None:
    token = tokens.MemberToken(INSTANCE, SECRET)
    assert token.hash == hashlib.sha256(SECRET.encode()).hexdigest()
    assert SECRET not in token.hash


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "nrm",
        "nrm_",
        f"xyz_{INSTANCE.hex}_{SECRET}",  # wrong prefix
        f"NRM_{INSTANCE.hex}_{SECRET}",
        f"nrm_{INSTANCE.hex[:-1]}_{SECRET}",  # 31 hex digits
        f"nrm_{INSTANCE.hex}0_{SECRET}",  # 33
        f"nrm_{'z' * 32}_{SECRET}",  # not hex
        f"nrm_{{{INSTANCE.hex[:30]}}}_{SECRET}",  # 32 characters that uuid would strip
        f"nrm_{INSTANCE.hex}_short",  # secret below 20 characters
        f"nrm_{INSTANCE.hex}_{'x' * 129}",  # secret above 128
        f"nrm_{INSTANCE.hex}",
        f"nrm_{INSTANCE!s}_{SECRET}",  # dashed form is not the token's form
    ],
)
def test_it_refuses_anything_not_shaped_like_a_member_token(raw: str) -> None:
    assert tokens.parse(raw) is None


def test_it_compares_in_constant_time_and_exactly() -> None:
    assert tokens.same("abc", "abc")
    assert not tokens.same("abc", "abd")
    assert not tokens.same("abc", "ab")
    assert not tokens.same("é", "e")
