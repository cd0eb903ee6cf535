"""Development identity: a local ES256 signing key and the tokens minted with it.

In production the OIDC provider signs tokens and the edge verifies them against its JWKS. On a
developer's machine ``orstream up`` creates a key on first start (``<state_dir>``, mode 0600) and
``orstream token`` mints tokens with it; the edge verifies them with the public half.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from orstream.common.keyfile import create_once

DEV_ALGORITHM = "ES256"
DEFAULT_TOKEN_TTL_S = 12 * 3600
DEV_KEY_ID = "orstream-dev-1"


def load_or_create_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the development key, creating it atomically (0600) if it does not exist."""
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        create_once(path, pem)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return loaded


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def mint_token(
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str,
    audience: str,
    role: str,
    rooms: list[str],
    subject: str | None = None,
    ttl_s: int = DEFAULT_TOKEN_TTL_S,
) -> str:
    """A signed JWT for ``role`` in the rooms matching the ``rooms`` globs (``site/room``)."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject or f"dev-{role}",
        "iat": now,
        "nbf": now - 5,
        "exp": now + ttl_s,
        "jti": secrets.token_hex(8),
        "role": role,
        "rooms": rooms,
    }
    return jwt.encode(claims, key, algorithm=DEV_ALGORITHM, headers={"kid": DEV_KEY_ID})
