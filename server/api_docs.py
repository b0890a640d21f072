"""The API's interactive docs (``/docs``, Swagger UI; ``/redoc``) served from this server only.

FastAPI's default pages load Swagger UI and ReDoc from a CDN, which a hall's
network often cannot reach (offline-first). The same pages are served here
with the JavaScript and CSS that ``fastapi-offline`` ships as package data
(Swagger UI 5, which renders OpenAPI 3.1), under ``/static/docs/``. Like
``/openapi.json`` they are open: they describe the API, the calls made from
them need a token (the "Authorize" button).
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PREFIX", "add_docs"]

ASSETS_PREFIX: Final = "/static/docs"


def _assets() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def add_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` with local assets. The app must be made with
    ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_PREFIX, StaticFiles(directory=_assets()), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PREFIX}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            redoc_js_url=f"{ASSETS_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PREFIX}/favicon.png",
            with_google_fonts=False,
        )
