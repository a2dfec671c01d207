"""What an admin changes: the rules. Every session that may still get a message is
planned again under the new ones."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import update

from services.reminders import db, domain
from services.reminders.context import PLANNER, Reminders
from services.reminders.rules import RulesDocument, parse_rules_document, store_rules
from shared.uow import after_commit

log = structlog.get_logger(__name__)


async def put_rules(app: Reminders, data: dict[str, Any]) -> RulesDocument:
    """Store new rules and re-plan every session that may still get a message."""
    document = parse_rules_document(data)
    now = app.now()
    async with app.uow.write() as session:
        await store_rules(session, document, now)
        await session.execute(
            update(db.Session)
            .where(db.Session.end_at > now - domain.REPAIR_WINDOW)
            .values(change_seq=db.Session.change_seq + 1, plan_pending=True)
        )
        after_commit(session, PLANNER)
    app.rules.clear()
    log.info("rules.changed", locations=len(document.locations))
    return document
