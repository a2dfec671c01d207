"""What the texts say: one GSM-7 SMS (two for those carrying the client's own page), the
facts a client needs, never health information; and the signed links and aftercare content
behind them."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.booking.manage.links import ManageLinks
from services.reminders import texts
from services.reminders.aftercare import (
    TOPICS,
    AftercareError,
    AftercareLibrary,
    aftercare_page,
)
from services.reminders.links import AFTERCARE, REFERRAL, LinkExpired, LinkInvalid, Links
from services.reminders.sender import RateLimiter, failure_of, is_transient
from services.reminders.texts import (
    TextContext,
    fits_one_sms,
    fits_two_sms,
    gsm7_segments,
    gsm7_septets,
    render,
)

NY = ZoneInfo("America/New_York")
SESSION_ID = "0b8f7a52-3c1e-4b7e-9a0d-6f1c2e3d4a5b"
#: What the texts must never carry (modalities, conditions, specialties, treatment words).
HEALTH_WORDS = re.compile(
    r"massage|lymph|drainage|myofascial|trigger|deep tissue|prenatal|pregnan|surgic|"
    r"therap|pain|injur|condition|diagnos|physio|acupunct|chiropract|sports",
    re.IGNORECASE,
)
LINKS = Links("test-secret", "https://reminders.riverside-clinic.example", 14 * 86400)
#: The client's own page as booking signs it, on a realistic public address.
MANAGE_URL = ManageLinks(["test-secret"], "https://book.riverside-clinic.example").url(SESSION_ID)
assert MANAGE_URL is not None
#: The texts that carry the client's page, and may take two segments for it.
WITH_MANAGE_URL = {"confirmation", "reminder", "reschedule", "ack_reschedule"}

# Realistic long values: the longest first names and location names a clinic has.
CASES = [
    TextContext("Maria", "", "Riverside Clinic", "(706) 555-0100"),
    TextContext("Christopher", "", "Downtown Wellness Center", "(706) 555-0100"),
    TextContext("Anne-Sophie", "", "Lakeside Clinic", "(334) 555-0100"),
]
WHEN = texts.local_when(datetime(2026, 12, 30, 17, 45, tzinfo=UTC), NY)  # the longest shape


def with_details(ctx: TextContext, kind: str) -> TextContext:
    link = ""
    if kind == "followup":
        link = LINKS.aftercare_url(SESSION_ID)
    elif kind == "referral":
        link = LINKS.referral_url(SESSION_ID)
    elif kind in WITH_MANAGE_URL:
        link = MANAGE_URL or ""
    return TextContext(ctx.first_name, WHEN, ctx.location, ctx.phone, link)


@pytest.mark.parametrize("kind", sorted(texts.TEMPLATES))
@pytest.mark.parametrize("ctx", CASES, ids=lambda c: c.first_name)
def test_every_text_fits_one_gsm7_sms_or_two_with_the_clients_page(
    kind: str, ctx: TextContext
) -> None:
    details = with_details(ctx, kind)
    body = render(kind, details)
    if kind in WITH_MANAGE_URL:
        assert MANAGE_URL in body, body
        assert fits_two_sms(body) and gsm7_segments(body) == 2, f"{len(body)} chars: {body}"
    else:
        assert fits_one_sms(body), f"{len(body)} chars: {body}"
    assert not HEALTH_WORDS.search(body), body
    # Without the client's page (booking issues none) every text is one SMS.
    plain = render(kind, without_link(details))
    if kind not in {"followup", "referral"}:
        assert fits_one_sms(plain), f"{len(plain)} chars: {plain}"
        assert MANAGE_URL not in plain


@pytest.mark.parametrize("kind", ["confirmation", "reminder"])
def test_confirmation_and_reminder_carry_the_clients_page_in_two_gsm7_segments(
    kind: str,
) -> None:
    body = render(kind, with_details(CASES[0], kind))
    assert f"See or change it: {MANAGE_URL} " in body, "the link stands alone, tappable"
    assert gsm7_septets(body) is not None, "GSM-7 only: no character forces UCS-2"
    assert gsm7_segments(body) == 2
    assert body.endswith("Questions? (706) 555-0100")


def test_a_name_only_ucs2_can_spell_keeps_the_text_short_without_the_page() -> None:
    ctx = TextContext("Łukasz", WHEN, "Riverside Clinic", "(706) 555-0100", MANAGE_URL or "")
    body = render("confirmation", ctx)
    assert "Łukasz" in body and MANAGE_URL not in body, "five UCS-2 parts are too many"
    assert render("ack_reschedule", ctx).count(MANAGE_URL or "-") == 1, "R still gives it"


def test_a_link_too_long_for_two_segments_is_left_out() -> None:
    ctx = TextContext("Maria", WHEN, "Riverside Clinic", "(706) 555-0100", "https://x/" + "a" * 300)
    body = render("reminder", ctx)
    assert fits_one_sms(body) and "https://x/" not in body


def test_the_answer_to_r_carries_the_page_or_else_the_phone() -> None:
    ctx = TextContext("", "", "Riverside Clinic", "(706) 555-0100", MANAGE_URL or "")
    body = render("ack_reschedule", ctx)
    assert MANAGE_URL in body and "(706) 555-0100" in body and fits_two_sms(body)
    without = render("ack_reschedule", TextContext("", "", "Riverside Clinic", "(706) 555-0100"))
    assert without == "To reschedule, please call Riverside Clinic at (706) 555-0100. Thank you!"


@pytest.mark.parametrize("kind", ["confirmation", "reminder", "reschedule"])
def test_session_texts_carry_name_time_place_phone_and_reply_options(kind: str) -> None:
    ctx = with_details(CASES[0], kind)
    body = render(kind, ctx)
    for fact in ("Maria", WHEN, "Riverside Clinic", "(706) 555-0100", "C", "R", "STOP"):
        assert fact in body
    assert "Reply C to confirm, R to reschedule, STOP to opt out." in body


def without_link(ctx: TextContext) -> TextContext:
    return TextContext(**{**ctx.__dict__, "link": ""})


def test_the_longest_variant_that_fits_is_chosen() -> None:
    short = render("confirmation", without_link(with_details(CASES[0], "confirmation")))
    assert short.endswith("Questions? (706) 555-0100")
    long = render("confirmation", without_link(with_details(CASES[1], "confirmation")))
    assert "Questions?" not in long and long.endswith("(706) 555-0100")
    # The same with the client's page, within two segments.
    short = render("reschedule", with_details(CASES[0], "reschedule"))
    assert short.endswith("Questions? (706) 555-0100") and "See or change it:" in short
    long = render("reschedule", with_details(CASES[1], "reschedule"))
    assert "Questions?" not in long and long.endswith("(706) 555-0100")
    assert MANAGE_URL in long and fits_two_sms(long)


def test_overlong_names_are_cut_rather_than_split_into_two_messages() -> None:
    ctx = TextContext(
        "Maximilianus-Alexandros",
        WHEN,
        "The Riverside Integrative Wellness and Recovery Center",
        "(706) 555-0100",
    )
    body = render("reminder", ctx)
    assert fits_one_sms(body)
    assert "(706) 555-0100" in body and WHEN in body
    linked = render("reminder", TextContext(**{**ctx.__dict__, "link": MANAGE_URL or ""}))
    assert fits_two_sms(linked)
    assert MANAGE_URL in linked and "(706) 555-0100" in linked and WHEN in linked


def test_local_time_follows_the_location_zone_and_dst() -> None:
    summer = datetime(2026, 7, 1, 18, 0, tzinfo=UTC)
    winter = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
    assert texts.local_when(summer, NY) == "Wed Jul 1 at 2:00 PM"
    assert texts.local_when(winter, NY) == "Tue Dec 1 at 1:00 PM"
    assert texts.local_when(winter, ZoneInfo("America/Chicago")) == "Tue Dec 1 at 12:00 PM"


def test_gsm7_counting_and_look_alikes() -> None:
    assert gsm7_septets("Hi") == 2
    assert gsm7_septets("€") == 2
    assert gsm7_septets("Łukasz") is None
    assert texts.to_gsm("Zoë’s “visit” – ok…") == 'Zoe\'s "visit" - ok...'
    assert texts.to_gsm("Łukasz") == "Łukasz", "kept: better two segments than a wrong name"
    assert texts.to_gsm("Renée Çelik") == "Renée Çelik"
    assert texts.to_gsm("Dvořák") == "Dvorak"


def test_phone_display() -> None:
    assert texts.display_phone("+17065550100") == "(706) 555-0100"
    assert texts.display_phone("+442079460000").startswith("+44 20")


# --- links ----------------------------------------------------------------------------


def test_links_are_short_signed_and_expire() -> None:
    url = LINKS.aftercare_url(SESSION_ID)
    token = url.rsplit("/", 1)[1]
    assert len(token) <= 48
    assert LINKS.read(AFTERCARE, token) == SESSION_ID
    with pytest.raises(LinkInvalid):
        LINKS.read(REFERRAL, token)  # another purpose's salt
    with pytest.raises(LinkInvalid):
        LINKS.read(AFTERCARE, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    with pytest.raises(LinkInvalid):
        Links("other-secret", "http://x", 60).read(AFTERCARE, token)
    old = Links("test-secret", "http://x", 14 * 86400, clock=lambda: time.time() - 15 * 86400)
    with pytest.raises(LinkExpired):
        LINKS.read(AFTERCARE, old.token(AFTERCARE, SESSION_ID))


def test_non_uuid_ids_survive_a_link() -> None:
    assert LINKS.read(REFERRAL, LINKS.token(REFERRAL, "ref-42")) == "ref-42"


# --- aftercare content ----------------------------------------------------------------

MODALITIES = [
    "deep_tissue",
    "trigger_point",
    "myofascial_release",
    "lymphatic_drainage",
    "sports",
    "prenatal",
    "post_surgical",
    "general",
]


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_modality_has_complete_aftercare(modality: str) -> None:
    content = AftercareLibrary().load()[modality]
    assert content.key == modality
    for topic, _ in TOPICS:
        if topic != "notes":
            assert content.topics[topic], topic
    urgent = content.topics["urgent"].lower()
    assert "calf" in urgent and "swollen" in urgent and "shortness of breath" in urgent
    assert "24 to 48 hours" in content.topics["soreness"]
    page = aftercare_page(content, "Riverside Clinic", "+17065550100", "(706) 555-0100")
    assert "tel:+17065550100" in page and "Get help right away" in page


def test_booking_modality_names_find_their_page() -> None:
    library = AftercareLibrary()
    assert library.for_modality("medical_massage").key == "general"
    assert library.for_modality("Lymphatic Drainage").key == "lymphatic_drainage"
    assert library.for_modality("something new").key == "general"


def test_a_clinic_can_edit_the_content(tmp_path: Path) -> None:
    (tmp_path / "general.toml").write_text(
        'title = "Massage"\n[topics]\nwater = "W"\nheat_cold = "H"\nmovement = "M"\n'
        'soreness = "S"\ncall_clinic = "C"\nurgent = "U"\n'
    )
    assert AftercareLibrary(tmp_path).for_modality("general").topics["water"] == "W"
    (tmp_path / "sports.toml").write_text('title = "Sports"\n[topics]\nwater = "W"\n')
    with pytest.raises(AftercareError, match=r"sports\.toml: missing topics heat_cold"):
        AftercareLibrary(tmp_path).load()


# --- sending helpers ------------------------------------------------------------------


def test_error_classification() -> None:
    from twilio.base.exceptions import TwilioRestException

    def err(status: int, code: int | None) -> TwilioRestException:
        return TwilioRestException(status, "uri", "msg", code)

    assert is_transient(err(429, 20429)) and is_transient(err(500, 20500))
    assert is_transient(err(503, None)) and is_transient(TimeoutError())
    for code in (21211, 21610, 21408, 21614):
        assert not is_transient(err(400, code))
        assert failure_of(err(400, code), 1).permanent
    assert failure_of(err(429, 20429), 5).detail.startswith("gave up after 5 attempts")


async def test_rate_limiter_spaces_calls_evenly() -> None:
    import asyncio

    limiter = RateLimiter(50)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(11):
        await limiter.wait()
    assert loop.time() - started >= 0.19, "11 calls at 50/s take at least 10 intervals"
