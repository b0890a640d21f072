"""Answers that carry a secret once: the JSON response class of every API route whose body
holds a secret shown in that answer only (a new token's ``secret``, an enrollment token),
and the field marker that says which fields those are.

``SecretJSONResponse`` adds ``Cache-Control: no-store`` (and ``Pragma: no-cache`` for
HTTP/1.0 caches), so that neither a proxy nor the client's cache keeps the body. A
response model's secret field is declared with ``secret_field``; the guardrail test
(``tests/integration/test_secret_answers.py``) walks every route and fails for one whose
model has a marked field but answers with another class. Never logs or holds a secret.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi.responses import JSONResponse
from pydantic import Field
from pydantic.fields import FieldInfo

__all__ = ["NO_STORE", "SECRET_MARK", "SecretJSONResponse", "is_secret_field", "secret_field"]

NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
"""The headers of an answer no cache may keep."""
SECRET_MARK: Final = "x-kioskfleet-secret"  # noqa: S105 - a marker's name, no secret
"""The OpenAPI extension a secret field carries (``secret_field``)."""


class SecretJSONResponse(JSONResponse):
    """A JSON answer with ``NO_STORE``: ``response_class=`` of a route answering a secret."""

    def __init__(self, content: Any, status_code: int = 200, **kwargs: Any) -> None:
        super().__init__(content, status_code, **kwargs)
        self.headers.update(NO_STORE)


def secret_field(description: str) -> Any:
    """A response model's field holding a secret shown once (marked ``SECRET_MARK``)."""
    return Field(description=description, json_schema_extra={SECRET_MARK: True})


def is_secret_field(field: FieldInfo) -> bool:
    """Whether a model field was declared with ``secret_field``."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get(SECRET_MARK) is True
