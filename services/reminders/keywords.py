"""What a client's reply means: Twilio's keywords, C and R, a check-in's number, BOOK, and
the open question a reply is read against. Pure: no I/O."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Literal

from services.reminders.domain import CONFIRM_KINDS

#: How long a check-in's question stays open: a number later is not recorded.
CHECKIN_OPEN_FOR = timedelta(hours=48)

Intent = Literal["opt_out", "opt_in", "help", "confirm", "reschedule", "book", "score", "other"]

#: Twilio's own keywords: it acts on them whatever the app does, so CANCEL always means
#: "stop texting me" and YES always means "start again".
OPT_OUT_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
CONFIRM_WORDS = frozenset({"C", "CONFIRM"})
RESCHEDULE_WORDS = frozenset({"R", "RESCHEDULE"})
BOOK_WORDS = frozenset({"BOOK"})
#: A check-in answer: ``7``, ``7/10``; 0 to 10 only.
SCORE = re.compile(r"(\d{1,2})(?:\s*/\s*10)?")


def _word(body: str) -> str:
    return re.sub(r"[\s.!?,;:'\"]+$", "", body.strip()).strip().upper()


def parse_score(body: str) -> int | None:
    """The number a check-in answer gives, 0 to 10; None when it is not one."""
    match = SCORE.fullmatch(_word(body))
    if match is None or int(match[1]) > 10:
        return None
    return int(match[1])


def parse_reply(body: str) -> Intent:
    """What a client's text asks for. One word, any case, trailing punctuation ignored."""
    word = _word(body)
    if word in OPT_OUT_WORDS:
        return "opt_out"
    if word in OPT_IN_WORDS:
        return "opt_in"
    if word in HELP_WORDS:
        return "help"
    if word in CONFIRM_WORDS:
        return "confirm"
    if word in RESCHEDULE_WORDS:
        return "reschedule"
    if word in BOOK_WORDS:
        return "book"
    if parse_score(word) is not None:
        return "score"
    return "other"


# ---------------------------------------------------------------------------------------
# Open questions: a reply is read against the latest one still open to that phone

QuestionKind = Literal["confirm", "checkin", "offer"]


def question_of(kind: str) -> QuestionKind | None:
    """Which question a sent text asks, if any."""
    if kind in CONFIRM_KINDS:
        return "confirm"
    if kind == "checkin":
        return "checkin"
    if kind == "waitlist_offer":
        return "offer"
    return None


def question_closes(
    kind: QuestionKind,
    sent_at: datetime,
    session_start: datetime | None,
    expires_at: datetime | None,
) -> datetime:
    """A check-in is open 48 hours, an offer until it expires, a C until the session starts."""
    if kind == "checkin":
        return sent_at + CHECKIN_OPEN_FOR
    if kind == "offer" and expires_at is not None:
        return expires_at
    return session_start or sent_at


def read_reply(intent: Intent, latest_open: str | None) -> str:
    """How a reply is answered, given the latest open question to that phone.

    Twilio's keywords, C and R keep their meaning whatever is open. A number answers an
    open check-in, BOOK an open offer; either with nothing open for it gets a short help
    text. Anything else is read against the latest open question: a check-in or an offer
    gets its own help text (never the question again), else the reply options.
    """
    if intent in ("opt_out", "opt_in", "help", "confirm", "reschedule"):
        return intent
    if intent == "score":
        return "record_score"
    if intent == "book":
        return "claim"
    if latest_open == "checkin":
        return "checkin_help"
    if latest_open == "offer":
        return "offer_help"
    return "other"
