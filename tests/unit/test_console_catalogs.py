"""Guardrail: every text the console's templates translate, and every state, kind and
condition word a page shows, is in both shipped catalogs (``en`` and ``zh_CN``), and
``zh_CN`` translates each one. A new ``_("...")`` in a template fails here until both
catalogs have it (docs/console.md, "Adding a language")."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.console.i18n import LANGUAGES, load_catalogs, template_messages
from server.console.web import vocabulary

TEMPLATES = Path(__file__).resolve().parents[2] / "server" / "console" / "templates"


def _wanted() -> set[str]:
    return template_messages(TEMPLATES) | set(vocabulary())


def test_the_templates_translate_text_at_all() -> None:
    found = template_messages(TEMPLATES)
    assert {"Log in", "Fleet", "Problems", "Audit log"} <= found


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_template_string_and_vocabulary_word_is_in_the_catalog(language: str) -> None:
    catalog = load_catalogs()[language]
    assert sorted(_wanted() - set(catalog.messages)) == []


def test_zh_cn_translates_every_message_and_no_catalog_keeps_a_stale_one() -> None:
    catalogs = load_catalogs()
    zh = catalogs["zh_CN"]
    assert sorted(m for m in _wanted() if not zh.messages.get(m)) == []
    for catalog in catalogs.values():
        assert sorted(set(catalog.messages) - _wanted()) == []


def test_an_untranslated_message_shows_itself() -> None:
    catalog = load_catalogs()["en"]
    assert catalog.gettext("Log in") == "Log in"
    assert catalog.gettext("paper_out") == "paper out"
    assert catalog.gettext("not in any catalog") == "not in any catalog"
