from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from orstream.viewer.service import ViewerService
from orstream.viewer.settings import ViewerSettings


async def test_serves_the_app_and_tells_it_where_the_edge_is() -> None:
    service = ViewerService(
        ViewerSettings(edge_url="http://edge.example:9000/", room="or7", stream="cam2")
    )
    transport = httpx.ASGITransport(app=service.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://viewer") as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert '<script type="module" src="app.js">' in page.text
        assert "https://" not in page.text, "no external resources: hospital networks are closed"
        config = (await client.get("/config.json")).json()
        assert config == {
            "edgeUrl": "http://edge.example:9000",
            "site": "site1",
            "room": "or7",
            "stream": "cam2",
            "oidc": None,
        }
        for asset in ("app.js", "signin.js", "oidc.js", "timecode.js", "style.css"):
            response = await client.get(f"/{asset}")
            assert response.status_code == 200
            assert "https://" not in response.text
        assert (await client.get("/missing.js")).status_code == 404


async def test_serves_the_dicom_dictionary_for_the_metadata_panel() -> None:
    service = ViewerService(ViewerSettings())
    transport = httpx.ASGITransport(app=service.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://viewer") as client:
        response = await client.get("/dicom-dictionary.json", headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        names = response.json()
        assert names["00100010"] == "Patient's Name"
        assert names["00081030"] == "Study Description"
        assert "00080064" in names and len(names) > 4000
        assert "00081080" not in names or names["00081080"]  # every entry has a name


async def test_tells_the_page_where_users_sign_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORSTREAM_OIDC_ISSUER", "https://login.hospital.example/realms/or")
    monkeypatch.setenv("ORSTREAM_OIDC_CLIENT_ID", "orstream-viewer")
    monkeypatch.setenv("ORSTREAM_OIDC_TOKEN", "id_token")
    monkeypatch.setenv("ORSTREAM_OIDC_AUTH_PARAMS", '{"kc_idp_hint": "hospital-ad"}')
    service = ViewerService(ViewerSettings())
    transport = httpx.ASGITransport(app=service.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://viewer") as client:
        config = (await client.get("/config.json")).json()
    assert config["oidc"] == {
        "issuer": "https://login.hospital.example/realms/or",
        "clientId": "orstream-viewer",
        "scope": "openid profile",
        "token": "id_token",
        "authParams": {"kc_idp_hint": "hospital-ad"},
    }


@pytest.mark.parametrize(
    "issuer",
    ["http://127.0.0.1:8443/realms/or", "http://localhost:8080", "http://[::1]:9000/tenant"],
)
def test_plain_http_issuers_only_on_loopback(issuer: str) -> None:
    assert ViewerSettings(oidc_issuer=issuer, oidc_client_id="v").oidc_issuer == issuer


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (
            {"oidc_issuer": "https://login.example/realms/or", "oidc_client_id": ""},
            "oidc_client_id is required",
        ),
        ({"oidc_issuer": "http://login.example/realms/or"}, "must use https"),
        ({"oidc_issuer": "login.example/realms/or"}, "must be an https URL"),
        ({"oidc_issuer": "https://login.example/?realm=or"}, "no query or fragment"),
        ({"oidc_scope": "profile email"}, "must include 'openid'"),
        ({"oidc_token": "refresh_token"}, "access_token"),
        (
            {"oidc_auth_params": {"redirect_uri": "https://evil.example/"}},
            "may not set redirect_uri",
        ),
    ],
)
def test_refuses_unsafe_or_incomplete_sign_in_settings(
    settings: dict[str, object], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        ViewerSettings(**{"oidc_client_id": "viewer", **settings})
