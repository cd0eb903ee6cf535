"""Bearer tokens → identities → decisions: every way a token can be wrong is refused with its own
reason (401), every role and room the policy does not grant is refused (403)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization

from orstream.common.policy import Policy
from orstream.signaling.auth import AccessDenied, Identity, TokenVerifier, claim
from orstream.signaling.jwks import JwksKeys, StaticKeys
from orstream.signaling.revocation import Revocations
from orstream.signaling.settings import SignalingSettings

from .conftest import AUDIENCE

if TYPE_CHECKING:  # the root conftest's provider and keys
    from conftest import Idp, SigningKey

POLICY_YAML = """
roles:
  surgeon: {rooms: ["*/*"], metadata: identified, annotate: true, chat: true, record: true}
  student:
    rooms: ["site1/lecture-*", "site1/or1"]
    streams: ["room-cam"]
    metadata: basic+clean-descriptors
    chat: true
  fellow: {rooms: ["site2/*"], streams: ["endo*"], metadata: identified, annotate: true}
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML, encoding="utf-8")
    return path


@pytest.fixture
async def keys(idp: Idp) -> AsyncIterator[JwksKeys]:
    source = JwksKeys(jwks_url=idp.jwks_url)
    yield source
    await source.aclose()


@pytest.fixture
def verifier(idp: Idp, keys: JwksKeys, policy_file: Path) -> TokenVerifier:
    return TokenVerifier(
        keys, idp.issuer, AUDIENCE, ["ES256", "RS256", "EdDSA"], Policy.load(policy_file)
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj).encode())


def _claims(idp: Idp, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": idp.issuer,
        "aud": AUDIENCE,
        "sub": "mallory",
        "iat": now,
        "exp": now + 300,
        "role": "surgeon",
        **extra,
    }


async def _refusal(verifier: TokenVerifier, authorization: str | None) -> AccessDenied:
    with pytest.raises(AccessDenied) as denied:
        await verifier.verify_header(authorization)
    return denied.value


async def test_valid_token_gives_the_policy_grant_of_its_role(
    idp: Idp, verifier: TokenVerifier, signing_keys: dict[str, SigningKey]
) -> None:
    identity = await verifier.verify_header(
        "Bearer " + idp.token(signing_keys["RS256"], sub="alice", jti="t-1")
    )
    assert (identity.subject, identity.role, identity.token_id) == ("alice", "student", "t-1")
    assert identity.rooms is None, "no rooms claim: the policy alone decides"
    assert identity.expires_at - identity.issued_at == 300
    assert identity.may_watch("site1", "lecture-a") and identity.may_watch("site1", "or1")
    assert identity.may_watch("site1", "or1", "room-cam")
    assert not identity.may_watch("site1", "or2")
    assert (identity.may_chat, identity.may_annotate, identity.may_record) == (True, False, False)
    assert identity.metadata_view == "basic+clean-descriptors"


async def test_student_asking_for_a_room_or_stream_the_policy_denies_gets_403(
    idp: Idp, verifier: TokenVerifier, signing_keys: dict[str, SigningKey]
) -> None:
    identity = await verifier.verify(idp.token(signing_keys["ES256"], sub="alice"))
    identity.require("site1", "or1", "room-cam")
    with pytest.raises(AccessDenied) as room:
        identity.require("site1", "or2")
    with pytest.raises(AccessDenied) as stream:
        identity.require("site1", "or1", "endoscope")
    assert room.value.status == stream.value.status == 403
    assert room.value.reason == (
        "role 'student' of 'alice' may not watch site1/or2: the policy does not grant it"
    )
    assert "may not watch site1/or1/endoscope" in stream.value.reason


async def test_a_custom_role_limited_to_some_rooms_and_streams(
    idp: Idp, verifier: TokenVerifier, signing_keys: dict[str, SigningKey]
) -> None:
    fellow = await verifier.verify(idp.token(signing_keys["EdDSA"], role="fellow"))
    assert fellow.may_watch("site2", "or7", "endoscope")
    assert not fellow.may_watch("site2", "or7", "room-cam")
    assert not fellow.may_watch("site1", "or1")
    assert (fellow.may_annotate, fellow.may_chat, fellow.metadata_view) == (
        True,
        False,
        "identified",
    )


async def test_the_rooms_claim_narrows_the_policy_and_never_widens_it(
    idp: Idp, verifier: TokenVerifier, signing_keys: dict[str, SigningKey]
) -> None:
    surgeon = await verifier.verify(
        idp.token(signing_keys["RS256"], sub="sam", role="surgeon", rooms=["site1/or1"])
    )
    assert surgeon.rooms == ("site1/or1",)
    assert surgeon.may_watch("site1", "or1", "anything")
    assert not surgeon.may_watch("site1", "or2")
    with pytest.raises(AccessDenied) as denied:
        surgeon.require("site1", "or2")
    assert (
        denied.value.status == 403 and "token is limited to rooms site1/or1" in denied.value.reason
    )
    student = await verifier.verify(idp.token(signing_keys["RS256"], rooms=["*/*"]))
    assert not student.may_watch("site1", "or2"), "a broad rooms claim cannot widen the policy"


async def test_role_claim_path_takes_the_first_role_the_policy_knows(
    idp: Idp, keys: JwksKeys, policy_file: Path, signing_keys: dict[str, SigningKey]
) -> None:
    verifier = TokenVerifier(
        keys,
        idp.issuer,
        AUDIENCE,
        ["RS256"],
        Policy.load(policy_file),
        role_claim="realm_access.roles",
    )
    realm = {"roles": ["offline_access", "uma_authorization", "fellow", "surgeon"]}
    identity = await verifier.verify(
        idp.token(signing_keys["RS256"], role=None, realm_access=realm)
    )
    assert identity.role == "fellow"
    with pytest.raises(AccessDenied) as denied:
        await verifier.verify(
            idp.token(signing_keys["RS256"], role=None, realm_access={"roles": ["admin"]})
        )
    assert denied.value.status == 403 and "not known to the policy" in denied.value.reason
    with pytest.raises(AccessDenied) as missing:
        await verifier.verify(idp.token(signing_keys["RS256"]))
    assert missing.value.status == 401 and "realm_access.roles" in missing.value.reason
    assert claim({"https://x.example/role": "a"}, "https://x.example/role") == "a"


def _tampered_role(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "surgeon"
    return f"{header}.{_segment(claims)}.{signature}"


def _hs256_with_public_key(idp: Idp, key: SigningKey) -> str:
    """Algorithm confusion: HMAC keyed with the RSA public key everyone can download."""
    secret = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}.{_segment(_claims(idp))}"
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _unsigned(idp: Idp, key: SigningKey) -> str:
    return f"{_segment({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{_segment(_claims(idp))}."


def _signed_by_impostor(idp: Idp, key: SigningKey) -> str:
    """Same kid and algorithm as a real key, another private key: a forged signature."""
    return idp.token(idp.new_key(key.alg, kid=key.kid), role="surgeon")


def _ec_signature_under_rsa_kid(idp: Idp, keys: dict[str, SigningKey]) -> str:
    impostor = replace(keys["ES256"], kid=keys["RS256"].kid)
    return idp.token(impostor)


BAD_TOKENS: list[tuple[str, Any, int, str]] = [
    ("no header", lambda idp, k: None, 401, "missing Authorization"),
    ("basic auth", lambda idp, k: "Basic YWxpY2U6cHc=", 401, "Bearer <token>"),
    ("empty bearer", lambda idp, k: "Bearer   ", 401, "Bearer <token>"),
    ("garbage", lambda idp, k: "Bearer not.a.jwt", 401, "malformed"),
    ("huge", lambda idp, k: "Bearer " + "a" * 20_000, 401, "longer than"),
    ("alg none", lambda idp, k: "Bearer " + _unsigned(idp, k["ES256"]), 401, "alg: none"),
    (
        "HS256 keyed with the public key",
        lambda idp, k: "Bearer " + _hs256_with_public_key(idp, k["RS256"]),
        401,
        "algorithm HS256 not allowed",
    ),
    (
        "forged signature",
        lambda idp, k: "Bearer " + _signed_by_impostor(idp, k["ES256"]),
        401,
        "signature invalid",
    ),
    (
        "role edited without re-signing",
        lambda idp, k: "Bearer " + _tampered_role(idp.token(k["EdDSA"])),
        401,
        "signature invalid",
    ),
    (
        "EC signature under an RSA kid",
        lambda idp, k: "Bearer " + _ec_signature_under_rsa_kid(idp, k),
        401,
        "does not fit key",
    ),
    (
        "PS256 not configured",
        lambda idp, k: "Bearer " + idp.token(replace(k["RS256"], kid="x", alg="PS256")),
        401,
        "algorithm PS256 not allowed",
    ),
    (
        "unknown kid",
        lambda idp, k: "Bearer " + idp.token(idp.new_key("ES256", kid="who-dis")),
        401,
        "'who-dis'",
    ),
    (
        "expired",
        lambda idp, k: "Bearer " + idp.token(k["ES256"], exp=int(time.time()) - 120),
        401,
        "expired",
    ),
    (
        "not yet valid",
        lambda idp, k: "Bearer " + idp.token(k["ES256"], nbf=int(time.time()) + 600),
        401,
        "not yet valid",
    ),
    (
        "wrong audience",
        lambda idp, k: "Bearer " + idp.token(k["RS256"], aud="another-app"),
        401,
        "another audience",
    ),
    (
        "wrong issuer",
        lambda idp, k: "Bearer " + idp.token(k["RS256"], iss="https://evil.example"),
        401,
        "untrusted issuer",
    ),
    ("no subject", lambda idp, k: "Bearer " + idp.token(k["RS256"], sub=None), 401, "'sub'"),
    ("no expiry", lambda idp, k: "Bearer " + idp.token(k["RS256"], exp=None), 401, "'exp'"),
    ("no role", lambda idp, k: "Bearer " + idp.token(k["RS256"], role=None), 401, "'role'"),
    (
        "rooms not a list",
        lambda idp, k: "Bearer " + idp.token(k["RS256"], rooms="site1/*"),
        401,
        "list of room globs",
    ),
    (
        "role not in policy",
        lambda idp, k: "Bearer " + idp.token(k["RS256"], role="admin"),
        403,
        "'admin'",
    ),
]


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [case[1:] for case in BAD_TOKENS],
    ids=[case[0] for case in BAD_TOKENS],
)
async def test_bad_tokens_are_refused_with_a_reason(
    idp: Idp,
    verifier: TokenVerifier,
    signing_keys: dict[str, SigningKey],
    make: Any,
    status: int,
    reason: str,
) -> None:
    denied = await _refusal(verifier, make(idp, signing_keys))
    assert (denied.status, reason in denied.reason) == (status, True), denied.reason


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "HS512", "ES256K"])
def test_unsafe_algorithms_can_never_be_configured(idp: Idp, alg: str) -> None:
    with pytest.raises(ValueError, match=r"never accepted|asymmetric only"):
        TokenVerifier(StaticKeys([]), idp.issuer, AUDIENCE, ["ES256", alg], Policy.load())


async def test_revoked_tokens_and_subjects_are_refused(
    idp: Idp, keys: JwksKeys, policy_file: Path, signing_keys: dict[str, SigningKey]
) -> None:
    revocations = Revocations()
    verifier = TokenVerifier(
        keys, idp.issuer, AUDIENCE, ["ES256"], Policy.load(policy_file), revocations=revocations
    )
    leaked = idp.token(signing_keys["ES256"], jti="leaked-1")
    other = idp.token(signing_keys["ES256"], jti="other-1")
    await revocations.revoke(jti="leaked-1", reason="posted in a chat")
    denied = await _refusal(verifier, f"Bearer {leaked}")
    assert (denied.status, denied.reason) == (401, "token revoked (posted in a chat)")
    assert (await verifier.verify(other)).token_id == "other-1"
    await revocations.revoke(sub="alice", reason="left the hospital")
    denied = await _refusal(verifier, f"Bearer {other}")
    assert denied.status == 401 and "left the hospital" in denied.reason


async def test_development_tokens_from_orstream_token_with_a_custom_policy(
    state_dir: Path, policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORSTREAM_POLICY_FILE", str(policy_file))

    async def orstream_token(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "orstream.cli.main", "token", "--rooms", "site2/or7", *args],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        return process.returncode or 0, out.decode().strip(), err.decode()

    code, token, _ = await orstream_token("--role", "fellow", "--sub", "dr-who")
    assert code == 0
    code, _, refused = await orstream_token("--role", "expert")
    assert code == 2 and "invalid choice: 'expert'" in refused
    assert "fellow, student, surgeon" in refused
    settings = SignalingSettings()
    assert settings.policy_file == policy_file
    verifier = TokenVerifier(
        StaticKeys.development(settings.dev_key_path),
        settings.jwt_issuer,
        settings.jwt_audience,
        settings.jwt_algorithms,
        Policy.load(settings.policy_file),
    )
    identity = await verifier.verify_header(f"Bearer {token}")
    assert isinstance(identity, Identity)
    assert (identity.subject, identity.role, identity.rooms) == ("dr-who", "fellow", ("site2/or7",))
    assert identity.may_watch("site2", "or7", "endoscope")
    assert not identity.may_watch("site2", "or8", "endoscope"), "narrowed by the token's rooms"
