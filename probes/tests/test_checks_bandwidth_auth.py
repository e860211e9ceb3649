"""Bandwidth test tokens: bound to one target, short-lived, and nothing else passes."""

from probes.checks.bandwidth_auth import derive_secret, sign, verify

SECRET = derive_secret("django-secret-key")
TARGET, OTHER = "7d5f7c1e-0000-4000-8000-000000000001", "7d5f7c1e-0000-4000-8000-000000000002"
NOW = 1_800_000_000.0


def test_a_token_opens_the_target_it_was_signed_for_until_it_expires() -> None:
    token = sign(SECRET, TARGET, NOW + 60)

    assert verify(SECRET, token, TARGET, NOW)
    assert verify(SECRET, token, TARGET.upper(), NOW + 60)  # however the id is spelled
    assert not verify(SECRET, token, TARGET, NOW + 61)
    assert not verify(SECRET, token, OTHER, NOW)


def test_nothing_else_passes() -> None:
    token = sign(SECRET, TARGET, NOW + 60)
    expiry, mac = token.split(".")[1:]

    assert not verify(SECRET, None, TARGET, NOW)
    assert not verify(SECRET, "", TARGET, NOW)
    assert not verify(derive_secret("another key"), token, TARGET, NOW)
    assert not verify(SECRET, f"nrb1.{int(expiry) + 1}.{mac}", TARGET, NOW)  # a longer life, same mac
    assert not verify(SECRET, f"nrb1.{expiry}.{mac[:-1]}0", TARGET, NOW)
    assert not verify(SECRET, f"nrb2.{expiry}.{mac}", TARGET, NOW)
    assert not verify(SECRET, "nrb1.soon.abc", TARGET, NOW)


def test_a_token_for_far_in_the_future_is_refused() -> None:
    # A signer that minted a year-long token (a leak, a bug) does not get a year of tests.
    assert not verify(SECRET, sign(SECRET, TARGET, NOW + 86400 * 365), TARGET, NOW)
    assert verify(SECRET, sign(SECRET, TARGET, NOW + 300), TARGET, NOW, max_ttl_s=600)


def test_an_explicit_secret_wins_and_a_derived_one_is_not_the_django_key() -> None:
    assert derive_secret("key", "shared-bandwidth-secret") == b"shared-bandwidth-secret"
    assert derive_secret("key") != b"key" and len(derive_secret("key")) == 32
