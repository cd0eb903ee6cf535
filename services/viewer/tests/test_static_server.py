from __future__ import annotations

import httpx

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
        }
        for asset in ("app.js", "timecode.js", "style.css"):
            response = await client.get(f"/{asset}")
            assert response.status_code == 200
            assert "https://" not in response.text
        assert (await client.get("/missing.js")).status_code == 404
