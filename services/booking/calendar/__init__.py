"""Calendar sync: sessions written into CalDAV calendars, busy time read from therapists' own.

How it fits together, all inside the booking process::

    booking.session.*  --durable consumer booking-caldav (inbox: each event once)-->
        push.mark_session: one calendar_pushes row per (calendar link, session), "write
        version >= N there". Database only: no network call inside the consumer's
        transaction; the push worker is woken after the commit.
    push.PushWorker (a shared Worker): one task per calendar drains its due rows. The
        CalDAV calls run in a thread pool of their own, outside any transaction; the
        outcome is recorded after. A failure backs off (per row and per calendar,
        doubling, capped); a calendar that failed CALENDAR_FAILURE_THRESHOLD times in a
        row is reported ("calendar_link.failing" log line, status "failing" in GET
        /v1/calendar-links) and the others go on. Because the rows are in the database,
        nothing is lost across a restart or an outage.
    sync.CalendarSync: two interval jobs on the shared LeasedScheduler (memory store,
        rebuilt at every take-over, nothing to persist), so one replica runs them:
        pull       each pull link (CalDAV or ICS) -> external_busy, which blocks availability
        reconcile  each push calendar against the sessions it should hold: an event deleted
                   or changed by hand is written again, a stale one removed.
    links: the admin's use cases (create, list, get, delete a link).

A lease on the link row (``lease_owner``/``lease_until``, ``context.SyncContext.claim``)
lets one worker at a time, across replicas, write to, read or reconcile one calendar.

What a push writes is the session's current state read from the database when the push
runs, not the event that asked for it: pushes can be retried, reordered or coalesced and
the calendar still ends up with the latest version (UID stable, SEQUENCE = version - 1).

``ical`` (iCalendar building and parsing, no I/O) and ``caldav`` (the outside calendars
themselves) are the two ends.
"""
