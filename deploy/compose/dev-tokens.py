"""Print the viewer's address with a development token, as ``orstream up`` does.

Run by the ``dev-tokens`` service of docker-compose.yml once the edge is up (in the signaling
image, with the edge's state volume mounted read-only): the tokens are signed with the
development key the edge created there and verifies against. See them again, or fresh ones
after they expire (12 h), with::

    docker compose run --rm dev-tokens
"""

from __future__ import annotations

import os

from orstream.common.config import CommonSettings
from orstream.common.policy import Policy
from orstream.common.tokens import load_or_create_signing_key, mint_token

#: The roles ``orstream up`` prints tokens for; others of the policy with ``orstream token``.
DEMO_ROLES = ("surgeon", "expert", "student", "ops")
DEFAULT_VIEWER_URL = "http://127.0.0.1:8080"


def main() -> None:
    settings = CommonSettings()
    if not settings.dev_key_path.exists():
        raise SystemExit(f"dev-tokens: no key at {settings.dev_key_path}: is the edge up?")
    key = load_or_create_signing_key(settings.dev_key_path)
    roles = [role for role in DEMO_ROLES if role in Policy.load(settings.policy_file).roles]
    rooms = [f"{settings.site}/*"]
    tokens = {
        role: mint_token(
            key,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            role=role,
            rooms=rooms,
        )
        for role in roles
    }
    viewer = os.environ.get("VIEWER_URL", DEFAULT_VIEWER_URL).rstrip("/")
    first = roles[0]
    print(f"\n  Open this in a browser (token for the {first} role):")
    print(f"    {viewer}/#token={tokens[first]}\n")
    print("  Tokens for the demo roles (paste into the viewer):")
    for role, token in tokens.items():
        print(f"    {role:8s} {token}")
    print(flush=True)


if __name__ == "__main__":
    main()
