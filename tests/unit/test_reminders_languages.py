"""Every template in every shipped language: within its segment budget (GSM-7 aware),
free of health words, with Babel's dates in that language; English where one is missing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.reminders import texts
from services.reminders.texts import (
    LANGUAGES,
    TextContext,
    fits_one_sms,
    fits_two_sms,
    gsm7_segments,
    gsm7_septets,
    render,
)
from tests.unit.test_reminders_texts import HEALTH_WORDS, LINKS, MANAGE_URL, SESSION_ID

NY = ZoneInfo("America/New_York")
#: The longest shapes: a Wednesday (miércoles) in September (septiembre), a 2-digit hour.
LONGEST = datetime(2026, 9, 30, 16, 45, tzinfo=UTC)
CASES = [
    ("Maria", "Riverside Clinic"),
    ("Christopher", "Downtown Wellness Center"),
    ("Anne-Sophie", "Lakeside Clinic"),
]
EVERY = sorted((code, kind) for code, language in LANGUAGES.items() for kind in language.texts)
LINKED = sorted((code, kind) for code, language in LANGUAGES.items() for kind in language.linked)


def context(first: str, location: str, language: str, kind: str) -> TextContext:
    link = ""
    if kind == "followup":
        link = LINKS.aftercare_url(SESSION_ID)
    elif kind == "referral":
        link = LINKS.referral_url(SESSION_ID)
    return TextContext(
        first_name=first,
        when=texts.local_when(LONGEST, NY, language),
        location=location,
        phone="(706) 555-0100",
        link=link,
        until=texts.local_time(LONGEST, NY, language),
        number="10",
    )


def test_english_and_spanish_are_shipped_and_every_kind_has_an_english_text() -> None:
    assert {"en", "es"} <= set(LANGUAGES)
    for language in LANGUAGES.values():
        assert set(language.texts) <= set(texts.TEMPLATES), language.code
        assert set(language.linked) <= set(texts.LINKED_TEMPLATES), language.code


@pytest.mark.parametrize(("language", "kind"), EVERY)
@pytest.mark.parametrize(("first", "location"), CASES, ids=[c[0] for c in CASES])
def test_every_template_fits_one_sms_and_holds_no_health_word(
    language: str, kind: str, first: str, location: str
) -> None:
    body = render(kind, context(first, location, language, kind), language)
    assert fits_one_sms(body), f"{gsm7_septets(body)} septets: {body}"
    assert not HEALTH_WORDS.search(body), body
    for variant in LANGUAGES[language].texts[kind]:
        assert not HEALTH_WORDS.search(variant), variant
        assert gsm7_septets(variant) is not None, f"a character outside GSM-7: {variant}"


@pytest.mark.parametrize(("language", "kind"), LINKED)
@pytest.mark.parametrize(("first", "location"), CASES, ids=[c[0] for c in CASES])
def test_texts_with_the_clients_page_fit_two_segments(
    language: str, kind: str, first: str, location: str
) -> None:
    ctx = context(first, location, language, kind)
    body = render(kind, TextContext(**{**ctx.__dict__, "link": MANAGE_URL or ""}), language)
    assert MANAGE_URL in body and fits_two_sms(body), body
    assert not HEALTH_WORDS.search(body), body


def test_spanish_dates_are_babels_in_spanish_and_gsm7_in_the_text() -> None:
    saturday = datetime(2026, 10, 3, 18, 0, tzinfo=UTC)
    assert texts.local_when(saturday, NY, "es") == "sábado 3 de octubre, 14:00"
    assert texts.local_when(saturday, NY, "es-MX") == "sábado 3 de octubre, 14:00"
    ctx = TextContext("Lucía", texts.local_when(saturday, NY, "es"), "Riverside", "(706) 555-0100")
    body = render("reminder", ctx, "es")
    assert "sabado 3 de octubre, 14:00" in body and body.startswith("Recordatorio: Lucia,")
    assert gsm7_segments(body) == 1, "á would have made it UCS-2 (70 a segment)"


def test_accents_outside_gsm7_would_cost_ucs2_which_is_why_the_texts_avoid_them() -> None:
    for letter in "ñé¿¡":
        assert gsm7_septets(letter) == 1, letter
    for letter in "áíóú":
        assert gsm7_septets(letter) is None, letter


def test_an_unknown_language_or_a_missing_template_is_english(tmp_path: Path) -> None:
    ctx = TextContext("Maria", "Tue Mar 10 at 2:00 PM", "Riverside", "(706) 555-0100")
    assert render("confirmation", ctx, "fr") == render("confirmation", ctx)
    assert render("confirmation", ctx, None) == render("confirmation", ctx, "en")
    assert texts.language_of("ES-us") == "es" and texts.language_of("de") == "en"
    (tmp_path / "xx.toml").write_text(
        'language = "xx"\n[dates]\nwhen = "d MMM"\nuntil = "H:mm"\n[texts]\nhelp = ["Xx {phone}"]\n'
    )
    shipped = texts.LANGUAGES.copy()
    try:
        texts.LANGUAGES.update(texts.load_languages(tmp_path))
        assert render("help", ctx, "xx") == "Xx (706) 555-0100"
        assert render("confirmation", ctx, "xx") == render("confirmation", ctx, "en")
    finally:
        texts.LANGUAGES.clear()
        texts.LANGUAGES.update(shipped)


def test_a_templates_file_without_dates_is_refused(tmp_path: Path) -> None:
    (tmp_path / "xx.toml").write_text('language = "xx"\n[texts]\nhelp = ["Xx"]\n')
    with pytest.raises(ValueError, match=r"xx\.toml"):
        texts.load_languages(tmp_path)
