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
