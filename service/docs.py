"""API docs (Swagger UI at /docs, ReDoc at /redoc) that load nothing from outside the host.

FastAPI's own pages pull their JavaScript, CSS, favicon and (ReDoc) Google fonts from CDNs, so
they are blank on an air-gapped cluster. Here the same pages load the copies that the
``fastapi-offline`` package ships, served under ``/docs-assets``: not ``/static``, which belongs to
the optuna-dashboard mounted at ``/``. The bundles still hold links of their own (ReDoc's sidebar
always shows the Redocly logo from its CDN), so the pages also carry a Content-Security-Policy that
lets the browser load nothing from another origin. The app must be built with ``docs_url=None``
and ``redoc_url=None`` and these routes added before the dashboard's mount. Nothing here enters
the OpenAPI schema.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs-assets"
# swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
# Same origin only. Inline: FastAPI's page scripts and the bundles' styles; data: the CSS icons;
# blob: ReDoc's search worker.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
)


def _same_origin_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


def install(app: FastAPI) -> None:
    """Add /docs, /docs/oauth2-redirect, /redoc and their assets to ``app``."""
    if app.docs_url or app.redoc_url or not app.openapi_url:
        raise ValueError("build the app with docs_url=None, redoc_url=None and an openapi_url")
    openapi_url = app.openapi_url
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _same_origin_only(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                init_oauth=app.swagger_ui_init_oauth,
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return _same_origin_only(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _same_origin_only(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )
