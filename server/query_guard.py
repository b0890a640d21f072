"""Refuse query parameters a route does not declare: 422 naming the parameter.

FastAPI ignores a query parameter no handler declares, so ``?healthh=faulty``
(a typo) or ``?status=degraded`` (a field, not a filter) answered 200 with the
whole fleet. ``UnknownQueryGuard`` is an ASGI middleware that finds the route a
request goes to, reads the query parameters that route declares (its handler's
and its dependencies', from FastAPI's dependency tree: nothing is listed by
hand) and answers 422 ``invalid_request`` in the API's error shape, with
FastAPI's validation detail (``loc: ["query", name]``, ``type: extra_forbidden``),
for any other one. It reads ``app.router.routes`` at request time, so routes
added later (``server.api.add_routes``) are guarded too. A plain Starlette route
(``/openapi.json``) declares no query parameter; mounts (the docs' static
assets) pass through. The guardrail test
``tests/integration/test_api_queries.py::test_every_get_route_refuses_an_unknown_query_parameter_naming_it``
walks every route.

It runs before authentication: an anonymous caller learns a route's parameter
names, which ``/openapi.json`` (open) says anyway. A refused call never reaches
its route, so the audit log (which records calls that reached a route) does not
hold it, as it does not hold a 404. Never reads the body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import QueryParams
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api_models import ErrorPublic

__all__ = ["UnknownQueryGuard", "declared_query_params", "unknown_query_message"]


def _query_names(dependant: Dependant) -> Iterator[str]:
    for field in dependant.query_params:
        annotation = field.field_info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            # a model of query parameters: its fields are the parameters
            for name, info in annotation.model_fields.items():
                yield info.alias or name
        else:
            yield field.alias
    for sub in dependant.dependencies:
        yield from _query_names(sub)


def declared_query_params(route: APIRoute) -> frozenset[str]:
    """The query parameter names ``route`` (its handler and its dependencies) declares."""
    return frozenset(_query_names(route.dependant))


def unknown_query_message(name: str, allowed: frozenset[str]) -> str:
    listed = ", ".join(sorted(allowed)) or "none"
    return f"unknown query parameter {name!r}; allowed: {listed}"


class UnknownQueryGuard:
    """The middleware (see the module docstring). ``routes`` gives the app's current routes."""

    def __init__(self, app: ASGIApp, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self._routes = routes
        self._declared: dict[int, tuple[APIRoute, frozenset[str]]] = {}

    def _allowed(self, route: Route) -> frozenset[str]:
        if not isinstance(route, APIRoute):
            return frozenset()
        cached = self._declared.get(id(route))
        if cached is None or cached[0] is not route:
            cached = (route, declared_query_params(route))
            self._declared[id(route)] = cached
        return cached[1]

    def _route(self, scope: Scope) -> BaseRoute | None:
        for route in self._routes():
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        route = self._route(scope)
        if not isinstance(route, Route):
            await self.app(scope, receive, send)
            return
        allowed = self._allowed(route)
        query = QueryParams(scope["query_string"])
        unknown = [name for name in dict.fromkeys(query.keys()) if name not in allowed]
        if not unknown:
            await self.app(scope, receive, send)
            return
        detail: list[dict[str, object]] = [
            {
                "type": "extra_forbidden",
                "loc": ["query", name],
                "msg": unknown_query_message(name, allowed),
                "input": query[name],
            }
            for name in unknown
        ]
        body = ErrorPublic(
            error="invalid_request", message=str(detail[0]["msg"]), detail=detail
        ).model_dump()
        await JSONResponse(status_code=422, content=body)(scope, receive, send)
