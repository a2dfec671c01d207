"""What the texts say: one SMS (160 GSM-7 characters) where possible, no health information.

A text carries the first name, the local date and time, the location's name and phone,
and how to reply. Never the treatment, the modality, a condition or a specialty: those
sit behind a signed link. Each template has shorter variants; the longest that fits in
one SMS is used. The session texts that carry the client's own page (``manage_url``:
confirmation, reminder, reschedule, and the answer to ``R``) may take two GSM-7 segments
for it: a link the client can tap is worth the second segment, a third is not.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import phonenumbers

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

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


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


def local_when(moment: datetime, tz: ZoneInfo) -> str:
    """``Tue Mar 10 at 2:00 PM``, on the location's wall clock, whatever the server's locale."""
    local = moment.astimezone(tz)
    hour = local.hour % 12 or 12
    half = "AM" if local.hour < 12 else "PM"
    return (
        f"{DAYS[local.weekday()]} {MONTHS[local.month - 1]} {local.day} "
        f"at {hour}:{local.minute:02d} {half}"
    )


def display_phone(phone: str, region: str = "US") -> str:
    """``(706) 555-0100`` for a number of the clinic's region, ``+44 20 …`` otherwise."""
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


REPLY_OPTIONS = "Reply C to confirm, R to reschedule, STOP to opt out."
SHORT_OPTIONS = "C=confirm R=reschedule STOP=opt out"

#: Longest first. Placeholders: first, when, location, phone, link.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "confirmation": (
        "Hi {first}, you're booked for {when} at {location}. "
        + REPLY_OPTIONS
        + " Questions? {phone}",
        "Hi {first}, you're booked for {when} at {location}. " + REPLY_OPTIONS + " {phone}",
        "{first}: booked {when}, {location}. " + SHORT_OPTIONS + " {phone}",
    ),
    "reminder": (
        "Reminder: {first}, your visit at {location} is {when}. "
        + REPLY_OPTIONS
        + " Questions? {phone}",
        "Reminder: {first}, your visit at {location} is {when}. " + REPLY_OPTIONS + " {phone}",
        "{first}: visit {when}, {location}. " + SHORT_OPTIONS + " {phone}",
    ),
    "reschedule": (
        "Hi {first}, your visit is moved to {when} at {location}. "
        + REPLY_OPTIONS
        + " Questions? {phone}",
        "Hi {first}, your visit is moved to {when} at {location}. " + REPLY_OPTIONS + " {phone}",
        "{first}: moved to {when}, {location}. " + SHORT_OPTIONS + " {phone}",
    ),
    "cancellation": (
        "Hi {first}, your visit on {when} at {location} is cancelled. To book again call {phone}. Reply STOP to opt out.",
        "Hi {first}, your visit on {when} at {location} is cancelled. To book again call {phone}.",
        "{first}: visit {when} cancelled. {location} {phone}",
    ),
    "followup": (
        "Hi {first}, thank you for visiting {location}. Aftercare tips: {link} Questions? {phone}",
        "Hi {first}, aftercare tips from {location}: {link} Questions? {phone}",
        "Hi {first}, aftercare from {location}: {link} {phone}",
        "{first}, aftercare tips: {link} {phone}",
    ),
    "referral": (
        "Hi {first}, there's an update for you from {location}: {link} Questions? Call {phone}. Reply STOP to opt out.",
        "Hi {first}, there's an update for you from {location}: {link} Questions? {phone}",
        "Hi {first}, an update from {location}: {link} {phone}",
        "{first}, an update for you: {link} {phone}",
    ),
    # Answers to replies (sent as TwiML).
    "ack_confirm": (
        "Thanks {first}, you're confirmed for {when} at {location}. See you then!",
        "Thanks {first}, you're confirmed for {when}.",
    ),
    "ack_nothing_to_confirm": (
        "Thanks {first}. We found no upcoming visit to confirm. Questions? Call {location} at {phone}.",
        "Thanks {first}. We found no upcoming visit to confirm. Call {phone}.",
    ),
    "ack_reschedule": (
        "To reschedule, please call {location} at {phone}. Thank you!",
        "To reschedule, please call {phone}.",
    ),
    "help": (
        "{location}: for help call {phone}. " + REPLY_OPTIONS + " Msg&data rates may apply.",
        "{location}: for help call {phone}. " + REPLY_OPTIONS,
        "Help: call {phone}. " + SHORT_OPTIONS,
    ),
    "other": (
        "Sorry, we didn't get that. " + REPLY_OPTIONS + " Or call {location} at {phone}.",
        "Sorry, we didn't get that. " + REPLY_OPTIONS + " Or call {phone}.",
    ),
    "unknown_phone": (
        "Sorry, we don't recognize this number. Please call {location} at {phone}. Thank you!",
        "Sorry, we don't recognize this number. Please call {phone}.",
        "Sorry, we don't recognize this number. Please call the clinic.",
    ),
}


MANAGE = "See or change it: {link}"

#: The texts that carry the client's page (``link`` is the session's ``manage_url``), two
#: segments at most. Without a link (not known, or a name only UCS-2 can spell) the
#: one-segment templates above are used.
LINKED_TEMPLATES: dict[str, tuple[str, ...]] = {
    "confirmation": (
        "Hi {first}, you're booked for {when} at {location}. "
        + MANAGE
        + " "
        + REPLY_OPTIONS
        + " Questions? {phone}",
        "Hi {first}, you're booked for {when} at {location}. {link} " + REPLY_OPTIONS + " {phone}",
        "{first}: booked {when}, {location}. {link} " + SHORT_OPTIONS + " {phone}",
    ),
    "reminder": (
        "Reminder: {first}, your visit at {location} is {when}. "
        + MANAGE
        + " "
        + REPLY_OPTIONS
        + " Questions? {phone}",
        "Reminder: {first}, your visit at {location} is {when}. {link} "
        + REPLY_OPTIONS
        + " {phone}",
        "{first}: visit {when}, {location}. {link} " + SHORT_OPTIONS + " {phone}",
    ),
    "reschedule": (
        "Hi {first}, your visit is moved to {when} at {location}. "
        + MANAGE
        + " "
        + REPLY_OPTIONS
        + " Questions? {phone}",
        "Hi {first}, your visit is moved to {when} at {location}. {link} "
        + REPLY_OPTIONS
        + " {phone}",
        "{first}: moved to {when}, {location}. {link} " + SHORT_OPTIONS + " {phone}",
    ),
    # The answer to R: the client's page, where a new time can be picked.
    "ack_reschedule": (
        "To reschedule or cancel, open {link} or call {location} at {phone}. Thank you!",
        "To reschedule or cancel, open {link} or call {phone}.",
        "To reschedule or cancel: {link}",
    ),
}


def _fill(template: str, ctx: TextContext) -> str:
    return template.format(
        first=ctx.first_name,
        when=ctx.when,
        location=ctx.location,
        phone=ctx.phone,
        link=ctx.link,
    )


def _shorten(value: str, by: int) -> str:
    keep = max(len(value) - by, 3)
    return value[:keep].rstrip() + "." if keep < len(value) else value


def render(kind: str, ctx: TextContext) -> str:
    """The longest variant of ``kind`` that fits its budget: one GSM-7 SMS, or two for a
    text carrying the client's page.

    When none does (very long names), the location name and then the first name are cut
    in the shortest variant; a name only UCS-2 can spell is kept as it is (and a text
    that cannot be GSM-7 goes without the client's page rather than in five parts).
    """
    ctx = TextContext(
        first_name=to_gsm(ctx.first_name.strip()),
        when=ctx.when,
        location=to_gsm(ctx.location.strip()),
        phone=ctx.phone,
        link=ctx.link,
    )
    if ctx.link and kind in LINKED_TEMPLATES:
        text = _render(LINKED_TEMPLATES[kind], ctx, TWO_SMS_LIMIT)
        if fits_two_sms(text):
            return text
        ctx = TextContext(**{**ctx.__dict__, "link": ""})
    return _render(TEMPLATES[kind], ctx, SMS_LIMIT)


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
        ctx = TextContext(**{**ctx.__dict__, name: cut})
    return _fill(shortest, ctx)
