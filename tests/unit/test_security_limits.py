"""Resource limits: a runaway recurring event is cut at 5,000 busy spans per link (and
the cut is reported), and lists of referrals never load report PDFs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from services.booking import domain
from services.booking.calendar.ical import MAX_BUSY_SPANS, busy_spans, capped_busy_spans
from services.referrals import db as referrals_db
from tests.unit.test_calendar_ics import NY, WINDOW, ics

MINUTELY = ics(
    """
UID:runaway
DTSTART;TZID=America/New_York:20260301T000000
DTEND;TZID=America/New_York:20260301T000030
RRULE:FREQ=MINUTELY
"""
)


def test_a_minutely_series_is_cut_at_the_limit_quickly_and_says_so() -> None:
    horizon = domain.Interval(WINDOW.start, WINDOW.start + timedelta(days=120))
    began = time.monotonic()
    spans, cut = capped_busy_spans([MINUTELY], horizon, NY)
    assert time.monotonic() - began < 10
    assert cut
    assert len(spans) == MAX_BUSY_SPANS
    assert spans == sorted(spans) and spans[0].start == datetime(2026, 3, 1, 5, tzinfo=UTC)
    assert len(busy_spans([MINUTELY], horizon, NY)) == MAX_BUSY_SPANS


def test_a_calendar_under_the_limit_is_whole() -> None:
    start = datetime(2026, 3, 1, 5, tzinfo=UTC)
    small = domain.Interval(start, start + timedelta(hours=2))
    spans, cut = capped_busy_spans([MINUTELY], small, NY)
    assert not cut
    assert 0 < len(spans) < MAX_BUSY_SPANS


def test_listing_referrals_does_not_select_the_report_pdf() -> None:
    sql = str(select(referrals_db.Referral).compile())
    assert "report_pdf," not in sql.replace("report_pdf_size", "")
    assert "length(referrals.report_pdf)" in sql


def test_the_pdf_size_comes_from_the_database_or_the_pdf_just_set() -> None:
    row = referrals_db.Referral(id="r")
    assert referrals_db.pdf_size(row) is None
    row.report_pdf = b"%PDF-1.4 hello"
    assert referrals_db.pdf_size(row) == 14
    loaded = referrals_db.Referral(id="r2")
    loaded.report_pdf_size = 5_000_000
    assert referrals_db.pdf_size(loaded) == 5_000_000
