"""What a front-desk key reaches in referrals, in one place.

A plan belongs to the location it was made at (``location_id``); a referral to its plan's
location; a client to every location where they have a plan (referrals learns no more of
them). A caller's :class:`~shared.auth.Scope` filters queries with these conditions, and
a single row outside it is :class:`NotFound`, as if it did not exist. Partner keys are
not scoped by location: they see the referrals sent to their partner (``queries.may_see``).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.sql.elements import ColumnElement

from services.referrals import db
from shared.auth import Scope


def plans(scope: Scope) -> ColumnElement[bool]:
    return scope.where(db.Plan.location_id)


def referrals(scope: Scope) -> ColumnElement[bool]:
    if scope.everything:
        return scope.where(db.Referral.plan_id)
    return db.Referral.plan_id.in_(select(db.Plan.id).where(plans(scope)))


def clients(scope: Scope) -> ColumnElement[bool]:
    if scope.everything:
        return scope.where(db.Client.id)
    return db.Client.id.in_(select(db.Plan.client_id).where(plans(scope)))


def reaches_plan(scope: Scope, plan: db.Plan) -> bool:
    return scope.allows(plan.location_id)
