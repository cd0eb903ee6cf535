"""The provider's keys over real HTTP: discovery, every default algorithm, rotation, throttled
refreshes for unknown kids, and an outage that the cached keys ride out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from orstream.common.policy import Policy
from orstream.signaling.auth import AccessDenied, TokenVerifier
from orstream.signaling.jwks import (
    JwksKeys,
    KeysUnavailable,
    StaticKeys,
    UnknownKey,
    VerificationKey,
    key_source,
    parse_jwks,
)
from orstream.signaling.settings import SignalingSettings

from .conftest import AUDIENCE

if TYPE_CHECKING:  # the root conftest's provider and keys
    from conftest import Idp, SigningKey

CACHE_S, MIN_REFRESH_S = 600.0, 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def keys(idp: Idp, clock: FakeClock) -> AsyncIterator[JwksKeys]:
    source = JwksKeys(
        jwks_url=idp.jwks_url, cache_s=CACHE_S, min_refresh_s=MIN_REFRESH_S, clock=clock
    )
    yield source
    await source.aclose()


def _verifier(idp: Idp, keys: JwksKeys | StaticKeys) -> TokenVerifier:
    return TokenVerifier(keys, idp.issuer, AUDIENCE, ["ES256", "RS256", "EdDSA"], Policy.load())


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_tokens_of_each_algorithm_verify_against_the_jwks(
    idp: Idp, keys: JwksKeys, signing_keys: dict[str, SigningKey], alg: str
) -> None:
    identity = await _verifier(idp, keys).verify(idp.token(signing_keys[alg], sub=f"bob-{alg}"))
    assert (identity.subject, identity.role) == (f"bob-{alg}", "student")
    assert idp.jwks_fetches == 1


async def test_discovery_finds_the_jwks_from_the_issuer(
    idp: Idp, signing_keys: dict[str, SigningKey]
) -> None:
    keys = JwksKeys(issuer=idp.issuer)
    try:
        identity = await _verifier(idp, keys).verify(idp.token(signing_keys["RS256"]))
    finally:
        await keys.aclose()
    assert identity.subject == "alice"
    assert idp.fetches["/realms/or/.well-known/openid-configuration"] == 1
    assert idp.jwks_fetches == 1


async def test_discovery_naming_another_issuer_is_not_trusted(
    idp: Idp, signing_keys: dict[str, SigningKey]
) -> None:
    idp.discovery_issuer = "https://evil.example/realms/or"
    keys = JwksKeys(issuer=idp.issuer)
    try:
        with pytest.raises(AccessDenied) as denied:
            await _verifier(idp, keys).verify(idp.token(signing_keys["ES256"]))
    finally:
        await keys.aclose()
    assert denied.value.status == 503 and "evil.example" in denied.value.reason
    assert denied.value.retry_after is not None and denied.value.retry_after >= 1
    assert idp.jwks_fetches == 0, "the JWKS of an issuer that is not ours is never fetched"


async def test_rotation_new_kid_verifies_after_refresh_and_removed_kid_is_refused(
    idp: Idp, keys: JwksKeys, clock: FakeClock, signing_keys: dict[str, SigningKey]
) -> None:
    verifier = _verifier(idp, keys)
    old = signing_keys["ES256"]
    new = idp.new_key("ES256", kid="es256-rotated")
    old_token = idp.token(old)
    assert (await verifier.verify(old_token)).subject == "alice"
    idp.serve(new, signing_keys["RS256"])  # the provider rotates: old key gone, new key in
    clock.now += MIN_REFRESH_S + 1
    identity = await verifier.verify(idp.token(new, sub="carol"))
    assert identity.subject == "carol"
    assert idp.jwks_fetches == 2
    with pytest.raises(AccessDenied) as denied:
        await verifier.verify(old_token)
    assert denied.value.status == 401
    assert old.kid in denied.value.reason and "does not have" in denied.value.reason


async def test_unknown_kids_refresh_at_most_once_per_interval(
    idp: Idp, keys: JwksKeys, clock: FakeClock, signing_keys: dict[str, SigningKey]
) -> None:
    verifier = _verifier(idp, keys)
    await verifier.verify(idp.token(signing_keys["ES256"]))
    assert idp.jwks_fetches == 1
    for i in range(20):  # forged kids right after a fetch: no fetch at all
        with pytest.raises(UnknownKey):
            await keys.find(f"forged-{i}")
    assert idp.jwks_fetches == 1
    clock.now += MIN_REFRESH_S
    for i in range(20):  # after the interval: exactly one
        with pytest.raises(UnknownKey):
            await keys.find(f"forged-again-{i}")
    assert idp.jwks_fetches == 2
    assert keys.counters.snapshot()["jwks_refresh_throttled"] == 39


async def test_keys_are_fetched_again_after_the_cache_time(
    idp: Idp, keys: JwksKeys, clock: FakeClock, signing_keys: dict[str, SigningKey]
) -> None:
    await keys.find(signing_keys["RS256"].kid)
    clock.now += CACHE_S - 1
    await keys.find(signing_keys["RS256"].kid)
    assert idp.jwks_fetches == 1
    clock.now += 2
    await keys.find(signing_keys["RS256"].kid)
    assert idp.jwks_fetches == 2


async def test_provider_outage_keeps_serving_the_cached_keys(
    idp: Idp, keys: JwksKeys, clock: FakeClock, signing_keys: dict[str, SigningKey]
) -> None:
    verifier = _verifier(idp, keys)
    await verifier.verify(idp.token(signing_keys["EdDSA"]))
    idp.failing = True
    clock.now += CACHE_S + 1  # stale: a refresh is due and fails (HTTP 503)
    assert (await verifier.verify(idp.token(signing_keys["EdDSA"], sub="dave"))).subject == "dave"
    idp.stop()
    clock.now += CACHE_S + 1  # and again, with nobody listening at all
    assert (await verifier.verify(idp.token(signing_keys["RS256"], sub="erin"))).subject == "erin"
    assert keys.counters.snapshot()["jwks_refresh_failures"] == 2


async def test_no_keys_yet_is_unavailable_not_unauthorized(
    idp: Idp, clock: FakeClock, signing_keys: dict[str, SigningKey]
) -> None:
    idp.failing = True
    keys = JwksKeys(jwks_url=idp.jwks_url, clock=clock)
    try:
        assert await keys.refresh() is False
        with pytest.raises(KeysUnavailable, match="503"):
            await keys.find(signing_keys["ES256"].kid)
        idp.failing = False
        clock.now += 60
        assert (await keys.find(signing_keys["ES256"].kid)).kid == signing_keys["ES256"].kid
    finally:
        await keys.aclose()


def test_jwks_parsing_keeps_only_public_signature_keys(signing_keys: dict[str, SigningKey]) -> None:
    rsa_key = signing_keys["RS256"]
    private_jwk = {"kty": "EC", "crv": "P-256", "kid": "leaked", "x": "AA", "y": "AA", "d": "AA"}
    document = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {**signing_keys["ES256"].jwk(), "use": "enc", "kid": "for-encryption"},
            private_jwk,
            {"kty": "OKP", "crv": "X25519", "kid": "ecdh", "x": "AA"},
            "not a key",
            rsa_key.jwk(),
            {**signing_keys["EdDSA"].jwk(), "kid": rsa_key.kid},  # a duplicate kid: first wins
        ]
    }
    keys = parse_jwks(document)
    assert list(keys) == [rsa_key.kid]
    assert keys[rsa_key.kid].jwk["kty"] == "RSA"
    with pytest.raises(ValueError, match="no usable"):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    with pytest.raises(ValueError, match="not a JWKS"):
        parse_jwks(["keys"])


def test_a_key_verifies_only_the_algorithms_its_type_allows(
    signing_keys: dict[str, SigningKey],
) -> None:
    rsa_undeclared = VerificationKey.from_jwk(signing_keys["RS256"].jwk(declare_alg=False))
    assert rsa_undeclared.for_algorithm("RS256") is not None
    bound = rsa_undeclared.for_algorithm("PS256")
    assert bound is not None and bound.algorithm_name == "PS256"
    assert rsa_undeclared.for_algorithm("ES256") is None
    assert rsa_undeclared.for_algorithm("HS256") is None
    rsa_declared = VerificationKey.from_jwk(signing_keys["RS256"].jwk())
    assert rsa_declared.for_algorithm("PS256") is None, "a declared alg is the only one"
    ec_key = VerificationKey.from_jwk(signing_keys["ES256"].jwk(declare_alg=False))
    assert ec_key.for_algorithm("ES256") is not None
    assert ec_key.for_algorithm("ES384") is None, "the curve decides the ES algorithm"
    ed_key = VerificationKey.from_jwk(signing_keys["EdDSA"].jwk(declare_alg=False))
    assert ed_key.for_algorithm("EdDSA") is not None and ed_key.for_algorithm("ES256") is None


async def test_settings_choose_the_key_source(idp: Idp, state_dir) -> None:
    dev = key_source(SignalingSettings(state_dir=state_dir))
    assert isinstance(dev, StaticKeys)
    assert (await dev.find("orstream-dev-1")).jwk["crv"] == "P-256"
    assert (state_dir / "dev-signing-key.pem").exists()
    by_url = key_source(SignalingSettings(state_dir=state_dir, jwks_url=idp.jwks_url))
    by_discovery = key_source(
        SignalingSettings(state_dir=state_dir, jwt_issuer=idp.issuer, oidc_discovery=True)
    )
    try:
        assert isinstance(by_url, JwksKeys) and isinstance(by_discovery, JwksKeys)
        assert await by_url.refresh() and await by_discovery.refresh()
        assert idp.fetches["/realms/or/.well-known/openid-configuration"] == 1
        assert idp.jwks_fetches == 2
    finally:
        await by_url.aclose()
        await by_discovery.aclose()
    with pytest.raises(ValueError, match="http"):
        JwksKeys(jwks_url="ftp://idp.example/certs")
