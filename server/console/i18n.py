"""The console's languages: gettext catalogs (``locale/<lang>/LC_MESSAGES/console.po``),
read at start with Babel's PO reader, and the choice of a language per request.

The ``.po`` files are the shipped catalogs themselves: no ``.mo`` compilation step, no
generated binary in the repository (docs/console.md says why). ``en`` is the source
language: its catalog lists every message with an empty translation (the message itself
is shown). A request's language is the user's setting, else the ``kf_lang`` cookie, else
the best match of its ``Accept-Language``, else ``en``. No network, no clock.
"""

from __future__ import annotations

import gettext
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Final

from babel.messages.pofile import read_po

__all__ = [
    "DEFAULT_LANGUAGE",
    "LANGUAGES",
    "Catalog",
    "catalog_path",
    "choose_language",
    "load_catalogs",
    "template_messages",
]

LANGUAGES: Final = ("en", "zh_CN")
DEFAULT_LANGUAGE: Final = "en"
_DOMAIN: Final = "console"


def catalog_path(language: str) -> Path:
    """Where the catalog of ``language`` lives (in the checkout and in an install)."""
    base = files("server.console") / "locale" / language / "LC_MESSAGES" / f"{_DOMAIN}.po"
    return Path(str(base))


class Catalog(gettext.NullTranslations):
    """One language's messages (msgid -> msgstr); an untranslated message shows itself."""

    def __init__(self, language: str, messages: Mapping[str, str]) -> None:
        super().__init__()
        self.language = language
        self._messages = dict(messages)

    def gettext(self, message: str) -> str:
        return self._messages.get(message) or message

    def ngettext(self, msgid1: str, msgid2: str, n: int) -> str:
        return self.gettext(msgid1 if n == 1 else msgid2)

    @property
    def messages(self) -> Mapping[str, str]:
        return self._messages


def load_catalogs() -> dict[str, Catalog]:
    """Every shipped language's catalog. Raises OSError if a catalog is missing."""
    catalogs = {}
    for language in LANGUAGES:
        with catalog_path(language).open("rb") as handle:
            po = read_po(handle, locale=language)
        messages = {str(m.id): str(m.string) for m in po if m.id and isinstance(m.id, str)}
        catalogs[language] = Catalog(language, messages)
    return catalogs


def _accepted(header: str) -> list[str]:
    """The languages of an ``Accept-Language`` header, most wanted first."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, index, tag.strip().replace("-", "_").lower()))
    return [tag for _q, _i, tag in sorted(ranked)]


def choose_language(
    user_setting: str | None, cookie: str | None, accept_language: str | None
) -> str:
    """The language to answer in (one of ``LANGUAGES``), see the module docstring."""
    for explicit in (user_setting, cookie):
        if explicit in LANGUAGES:
            return explicit
    for tag in _accepted(accept_language or ""):
        for language in LANGUAGES:
            code = language.lower()
            if tag == code or tag == code.split("_")[0] or tag.startswith(code.split("_")[0]):
                return language
    return DEFAULT_LANGUAGE


def template_messages(templates: Path) -> set[str]:
    """Every message the templates under ``templates`` translate (``_("...")``,
    ``gettext``, ``{% trans %}``), extracted as Babel's Jinja2 extractor does."""
    from babel.messages.extract import extract
    from jinja2.ext import babel_extract

    found: set[str] = set()
    for template in sorted(templates.glob("*.html")):
        with template.open("rb") as handle:
            for _line, message, _comments, _context in extract(
                babel_extract,  # type: ignore[arg-type]
                handle,
                options={"extensions": "jinja2.ext.i18n"},
            ):
                found.add(message if isinstance(message, str) else message[0])
    return found
