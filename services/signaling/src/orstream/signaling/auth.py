"""Who is asking, and may they watch this room: bearer JWT → :class:`Identity` → a decision.

Every refusal carries a reason a person can act on, and happens before any SDP answer exists.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

#: The roles the design defines; a token naming another role is refused.
KNOWN_ROLES = frozenset({"surgeon", "expert", "student", "ops"})


class AccessDenied(Exception):
    """A refusal: ``status`` is 401 (who are you?) or 403 (not for you)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    role: str
    rooms: tuple[str, ...]
    token_id: str
    expires_at: int

    def may_watch(self, site: str, room: str) -> bool:
        where = f"{site}/{room}"
        return any(fnmatch.fnmatchcase(where, pattern) for pattern in self.rooms)

    def require_room(self, site: str, room: str) -> None:
        if not self.may_watch(site, room):
            raise AccessDenied(
                403, f"role {self.role!r} of {self.subject!r} may not watch {site}/{room}"
            )


class TokenVerifier:
    """Verifies bearer tokens against one public key (the development key, for now)."""

    def __init__(
        self,
        public_key: ec.EllipticCurvePublicKey,
        issuer: str,
        audience: str,
        algorithms: list[str],
    ) -> None:
        if any(alg.lower() == "none" for alg in algorithms):
            raise ValueError("the 'none' algorithm is never accepted")
        self._key = public_key
        self._issuer = issuer
        self._audience = audience
        self._algorithms = algorithms

    def verify_header(self, authorization: str | None) -> Identity:
        if not authorization:
            raise AccessDenied(401, "missing Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AccessDenied(401, "Authorization must be 'Bearer <token>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AccessDenied(401, "token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AccessDenied(401, "token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AccessDenied(401, "token is from an untrusted issuer") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise AccessDenied(401, "token algorithm not allowed") from exc
        except jwt.InvalidSignatureError as exc:
            raise AccessDenied(401, "token signature invalid") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AccessDenied(401, f"token lacks claim {exc.claim!r}") from exc
        except jwt.InvalidTokenError as exc:
            raise AccessDenied(401, f"token invalid: {exc}") from exc
        role = claims.get("role")
        rooms = claims.get("rooms")
        if role not in KNOWN_ROLES:
            raise AccessDenied(403, f"role {role!r} is not known here")
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise AccessDenied(403, "token names no rooms")
        return Identity(
            subject=str(claims["sub"]),
            role=role,
            rooms=tuple(rooms),
            token_id=str(claims.get("jti", "")),
            expires_at=int(claims["exp"]),
        )
