"""Serves the browser app: static files plus ``/config.json`` telling it where the edge is and
where its users sign in (the OpenID provider, or none).

No CDN, no external fonts: hospital networks are closed, so everything the page needs is here.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orstream.common.health import HttpServer, health_routes
from orstream.common.runner import ServiceContext
from orstream.viewer.dictionary import dictionary
from orstream.viewer.settings import ViewerSettings


class ViewerService:
    name = "viewer"
    uses_bus = False
    uses_health_port = False

    def __init__(self, settings: ViewerSettings) -> None:
        self.settings = settings
        self.http: HttpServer | None = None

    def app(self) -> Starlette:
        settings = self.settings

        async def config(_: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "edgeUrl": settings.edge_url.rstrip("/"),
                    "site": settings.site,
                    "room": settings.room,
                    "stream": settings.stream,
                    "oidc": settings.browser_oidc(),
                },
                headers={"Cache-Control": "no-store"},
            )

        static = str(resources.files("orstream.viewer") / "static")
        return Starlette(
            middleware=[Middleware(GZipMiddleware, minimum_size=2048)],
            routes=[
                Route("/config.json", config),
                Route("/dicom-dictionary.json", dictionary),
                *health_routes(self.ready, self.stats),
                Mount("/", StaticFiles(directory=static, html=True)),
            ],
        )

    async def start(self, ctx: ServiceContext) -> None:
        self.http = HttpServer(self.app(), self.settings.http_host, self.settings.http_port)
        await self.http.start()
        ctx.stack.push_async_callback(self.http.stop)

    def ready(self) -> bool:
        return self.http is not None

    def stats(self, since_ns: int) -> dict[str, Any]:
        return {}
