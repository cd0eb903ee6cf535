"""Bearer tokens: every way a token can be wrong is refused with its own reason."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from orstream.common.tokens import mint_token
from orstream.signaling.auth import AccessDenied, TokenVerifier

ISS, AUD = "orstream-dev", "orstream"


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def verifier(key: ec.EllipticCurvePrivateKey) -> TokenVerifier:
    return TokenVerifier(key.public_key(), ISS, AUD, ["ES256"])


def _token(key: ec.EllipticCurvePrivateKey, **kw: object) -> str:
    args: dict[str, object] = {
        "issuer": ISS,
        "audience": AUD,
        "role": "student",
        "rooms": ["site1/*"],
    }
    args.update(kw)
    return mint_token(key, **args)  # type: ignore[arg-type]


def test_valid_token_gives_identity_and_room_decisions(key, verifier) -> None:
    identity = verifier.verify_header("Bearer " + _token(key, subject="alice"))
    assert (identity.subject, identity.role) == ("alice", "student")
    assert identity.may_watch("site1", "or1")
    assert not identity.may_watch("site2", "or1")
    with pytest.raises(AccessDenied) as denied:
        identity.require_room("site2", "or1")
    assert denied.value.status == 403


def _unsigned(claims: dict[str, object]) -> str:
    def b64(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda key: None, 401, "missing Authorization"),
        (lambda key: "Basic abc", 401, "Bearer"),
        (lambda key: "Bearer " + _token(key, ttl_s=-60), 401, "expired"),
        (lambda key: "Bearer " + _token(key, audience="other"), 401, "audience"),
        (lambda key: "Bearer " + _token(key, issuer="evil"), 401, "issuer"),
        (lambda key: "Bearer " + _token(ec.generate_private_key(ec.SECP256R1())), 401, "signature"),
        (lambda key: "Bearer not.a.jwt", 401, "invalid"),
        (lambda key: "Bearer " + _token(key, role="admin"), 403, "not known"),
        (
            lambda key: (
                "Bearer "
                + _unsigned(
                    {
                        "iss": ISS,
                        "aud": AUD,
                        "sub": "x",
                        "role": "surgeon",
                        "rooms": ["*"],
                        "iat": int(time.time()),
                        "exp": int(time.time()) + 60,
                    }
                )
            ),
            401,
            "algorithm",
        ),
        (
            lambda key: (
                "Bearer "
                + jwt.encode({"iss": ISS, "aud": AUD, "role": "ops", "rooms": []}, key, "ES256")
            ),
            401,
            "lacks claim",
        ),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(
    key, verifier, make, status: int, reason: str
) -> None:
    with pytest.raises(AccessDenied) as denied:
        verifier.verify_header(make(key))
    assert denied.value.status == status
    assert reason in denied.value.reason


def test_alg_none_can_never_be_configured(key) -> None:
    with pytest.raises(ValueError, match="none"):
        TokenVerifier(key.public_key(), ISS, AUD, ["ES256", "none"])
