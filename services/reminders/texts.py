"""What the texts say: one SMS (160 GSM-7 characters) where possible, no health information.

A text carries the first name, the local date and time, the location's name and phone,
and how to reply. Never the treatment, the modality, a condition or a specialty: those
sit behind a signed link. Each template has shorter variants; the longest that fits in
one SMS is used. The session texts that carry the client's own page (``manage_url``:
confirmation, reminder, reschedule, and the answer to ``R``) may take two GSM-7 segments
for it: a link the client can tap is worth the second segment, a third is not.
"""

from __future__ import annotations

import functools
import tomllib
import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers
from babel.dates import format_datetime

#: The shipped templates, one file per language (``templates/<language>.toml``).
TEMPLATE_DIR = Path(__file__).with_name("templates")
DEFAULT_LANGUAGE = "en"

SMS_LIMIT = 160
#: Septets per part once a text is split (the rest is the concatenation header).
SEGMENT = 153
#: The budget of a text carrying the client's page: two segments.
TWO_SMS_LIMIT = 2 * SEGMENT

# GSM 03.38: characters of a 7-bit SMS; the extension ones take two septets.
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENDED = frozenset("^{}\\[~]|€\f")
#: Look-alikes that would force the whole text into UCS-2 (70 characters per SMS).
_PLAIN = str.maketrans(
    {
        "‘": "'",
        "’": "'",
        "“": '"',
        "”": '"',
        "–": "-",
        "—": "-",
        "…": "...",
        "\u00a0": " ",
    }
)


def gsm7_septets(text: str) -> int | None:
    """Septets ``text`` takes in GSM-7, or None when it needs UCS-2."""
    if not all(ch in GSM_BASIC or ch in GSM_EXTENDED for ch in text):
        return None
    return sum(2 if ch in GSM_EXTENDED else 1 for ch in text)


def fits_one_sms(text: str) -> bool:
    septets = gsm7_septets(text)
    return septets is not None and septets <= SMS_LIMIT


def gsm7_segments(text: str) -> int | None:
    """How many SMS ``text`` is sent as in GSM-7, or None when it needs UCS-2."""
    septets = gsm7_septets(text)
    if septets is None:
        return None
    return 1 if septets <= SMS_LIMIT else -(-septets // SEGMENT)


def fits_two_sms(text: str) -> bool:
    septets = gsm7_septets(text)
    return septets is not None and septets <= TWO_SMS_LIMIT


def to_gsm(text: str) -> str:
    """Replace what has a GSM-7 look-alike: curly quotes, dashes, accents GSM lacks (ł stays)."""
    out = []
    for ch in text.translate(_PLAIN):
        if ch in GSM_BASIC or ch in GSM_EXTENDED:
            out.append(ch)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out.append(base if base and all(c in GSM_BASIC for c in base) else ch)
    return "".join(out)


def local_when(moment: datetime, tz: ZoneInfo, language: str | None = DEFAULT_LANGUAGE) -> str:
    """``Tue Mar 10 at 2:00 PM`` (``martes 10 de marzo, 14:00``), on the location's wall clock,
    written by Babel in the client's language whatever the server's locale."""
    code = language_of(language)
    return format_datetime(moment, LANGUAGES[code].when_pattern, tzinfo=tz, locale=code)


def local_time(moment: datetime, tz: ZoneInfo, language: str | None = DEFAULT_LANGUAGE) -> str:
    """``2:15 PM`` (``14:15``): when an offer closes, on the location's wall clock."""
    code = language_of(language)
    return format_datetime(moment, LANGUAGES[code].until_pattern, tzinfo=tz, locale=code)


@functools.lru_cache(maxsize=256)
def display_phone(phone: str, region: str = "US") -> str:
    """``(706) 555-0100`` for a number of the clinic's region, ``+44 20 …`` otherwise.

    Remembered: the phones shown are the clinic's and its locations', a handful, and
    parsing one again for every text was two fifths of rendering a burst's texts."""
    try:
        parsed = phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException:
        return phone
    same_region = phonenumbers.region_code_for_number(parsed) == region
    style = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if same_region
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    return phonenumbers.format_number(parsed, style)


@dataclass(frozen=True)
class TextContext:
    """The only facts a text may carry."""

    first_name: str = ""
    when: str = ""
    location: str = ""
    phone: str = ""
    link: str = ""
    #: When an offer closes (local time), and the number a check-in answer noted.
    until: str = ""
    number: str = ""


@dataclass(frozen=True)
class Language:
    """One language's texts: variants per kind (longest first), and its date patterns."""

    code: str
    when_pattern: str
    until_pattern: str
    texts: dict[str, tuple[str, ...]]
    linked: dict[str, tuple[str, ...]]


def load_language(path: Path) -> Language:
    """One templates file; a file without a ``[dates]`` table, or with a variant list that is
    empty, is refused at start with the file named."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    try:
        dates = data["dates"]
        language = Language(
            code=str(data["language"]),
            when_pattern=str(dates["when"]),
            until_pattern=str(dates["until"]),
            texts={k: tuple(v) for k, v in data.get("texts", {}).items()},
            linked={k: tuple(v) for k, v in data.get("linked", {}).items()},
        )
    except KeyError as exc:
        raise ValueError(f"{path}: {exc.args[0]} is missing") from None
    for kind, variants in {**language.texts, **language.linked}.items():
        if not variants:
            raise ValueError(f"{path}: {kind} has no variant")
    return language


def load_languages(directory: Path = TEMPLATE_DIR) -> dict[str, Language]:
    found = (load_language(path) for path in sorted(directory.glob("*.toml")))
    return {language.code: language for language in found}


LANGUAGES: dict[str, Language] = load_languages()
#: The English templates: every kind exists here (the fallback of every other language).
TEMPLATES: dict[str, tuple[str, ...]] = LANGUAGES[DEFAULT_LANGUAGE].texts
#: The texts that carry the client's page (``link`` is the session's ``manage_url``), two
#: segments at most. Without a link (not known, or a name only UCS-2 can spell) the
#: one-segment templates are used.
LINKED_TEMPLATES: dict[str, tuple[str, ...]] = LANGUAGES[DEFAULT_LANGUAGE].linked


def language_of(tag: str | None) -> str:
    """The shipped language a BCP 47 tag asks for (``es-MX`` -> ``es``), else English."""
    base = (tag or "").replace("_", "-").split("-", 1)[0].lower()
    return base if base in LANGUAGES else DEFAULT_LANGUAGE


def _variants(kind: str, language: str | None, linked: bool) -> tuple[str, ...] | None:
    own = LANGUAGES[language_of(language)]
    english = LANGUAGES[DEFAULT_LANGUAGE]
    table, fallback = (own.linked, english.linked) if linked else (own.texts, english.texts)
    return table.get(kind) or fallback.get(kind)


def _fill(template: str, ctx: TextContext) -> str:
    return template.format(
        first=ctx.first_name,
        when=ctx.when,
        location=ctx.location,
        phone=ctx.phone,
        link=ctx.link,
        until=ctx.until,
        number=ctx.number,
    )


def _shorten(value: str, by: int) -> str:
    keep = max(len(value) - by, 3)
    return value[:keep].rstrip() + "." if keep < len(value) else value


def render(kind: str, ctx: TextContext, language: str | None = DEFAULT_LANGUAGE) -> str:
    """The longest variant of ``kind`` in ``language`` (English where that language has no
    such template) that fits its budget: one GSM-7 SMS, or two for a text carrying the
    client's page.

    When none does (very long names), the location name and then the first name are cut
    in the shortest variant; a name only UCS-2 can spell is kept as it is (and a text
    that cannot be GSM-7 goes without the client's page rather than in five parts).
    """
    ctx = replace(
        ctx,
        first_name=to_gsm(ctx.first_name.strip()),
        when=to_gsm(ctx.when),
        location=to_gsm(ctx.location.strip()),
    )
    linked = _variants(kind, language, linked=True)
    if ctx.link and linked is not None:
        text = _render(linked, ctx, TWO_SMS_LIMIT)
        if fits_two_sms(text):
            return text
        ctx = replace(ctx, link="")
    variants = _variants(kind, language, linked=False)
    if variants is None:
        raise KeyError(f"no template for {kind!r}")
    return _render(variants, ctx, SMS_LIMIT)


def _render(variants: tuple[str, ...], ctx: TextContext, limit: int) -> str:
    for template in variants:
        text = _fill(template, ctx)
        septets = gsm7_septets(text)
        if septets is not None and septets <= limit:
            return text
    shortest = variants[-1]
    text = _fill(shortest, ctx)
    septets = gsm7_septets(text)
    if septets is None:
        return text
    over = septets - limit
    for name in ("location", "first_name"):
        if over <= 0:
            break
        value = getattr(ctx, name)
        cut = _shorten(value, over + 1)
        over -= len(value) - len(cut)
        ctx = replace(ctx, **{name: cut})
    return _fill(shortest, ctx)
