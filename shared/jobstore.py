"""APScheduler's job store in the service's database, as :mod:`shared.scheduling` uses it.

- :func:`job_store_engine`: the store's own blocking engine (APScheduler 3 calls its
  store synchronously), tuned for SQLite's single writer;
- :class:`ChunkedJobStore`: at most ``max_due`` due jobs per look, batched adds and removes
  in one transaction, and unreadable jobs dropped instead of stopping the scheduler.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import structlog
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.util import datetime_to_utc_timestamp
from sqlalchemy import Connection, Engine, create_engine, event, select

from shared.db import sync_url, upsert_insert

log = structlog.get_logger(__name__)


def job_store_engine(database_url: str) -> Engine:
    """The blocking engine of a job store. On SQLite: WAL, ``synchronous=NORMAL`` (a job
    write costs well under a millisecond instead of an fsync) and a busy timeout."""
    url = sync_url(database_url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


class ChunkedJobStore(SQLAlchemyJobStore):
    """Hands out at most ``max_due`` due jobs per look.

    ``_process_jobs`` runs synchronously on the event loop and removes each job it starts
    in a transaction of its own; ten thousand jobs due at once would block the loop for
    seconds, long enough to lose the lease. With a cap the scheduler sees that the next job
    is already due and wakes again at once, so the loop serves everything else between
    chunks. An unreadable job (its function gone) is logged and dropped.
    """

    def __init__(self, *args: Any, max_due: int = 200, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_due = max_due
        self._upsert: Any = None
        self._local = threading.local()  # the batch's connection, for its own thread only

    @contextlib.contextmanager
    def one_transaction(self) -> Iterator[None]:
        """Adds and removes made in this block share one transaction (a plan pass stores
        hundreds of jobs: one commit each was a fifth of the planner's time). An add is an
        upsert then, since a failed insert would abort PostgreSQL's whole transaction; the
        adds wait in a list and go as one statement of many rows (built once per store),
        the removes (a scheduler pass removes every job it starts) as one ``IN``: both
        before any other statement of the block, and at its end."""
        with self.engine.begin() as connection:
            self._local.connection = connection
            self._local.rows = []
            self._local.removed = []
            try:
                yield
                self._write_pending()
            finally:
                self._local.connection = None
                self._local.rows = []
                self._local.removed = []

    def _batch(self) -> Connection | None:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            self._write_pending()  # a look or a write sees what was asked before it
        return connection

    def _write_pending(self) -> None:
        """The removes, then the adds: a remove asked for after an add wrote that add
        first (``remove_job``), so the removes waiting were all asked for before the adds."""
        removed = getattr(self._local, "removed", None)
        if removed:
            self._local.removed = []
            self._local.connection.execute(
                self.jobs_t.delete().where(self.jobs_t.c.id.in_(removed))
            )
        self._write_added()

    def _write_added(self) -> None:
        rows = getattr(self._local, "rows", None)
        if not rows:
            return
        self._local.rows = []
        if self._upsert is None:
            insert = upsert_insert(self.engine.dialect.name)
            statement = insert(self.jobs_t)
            self._upsert = statement.on_conflict_do_update(
                index_elements=[self.jobs_t.c.id],
                set_={
                    "next_run_time": statement.excluded.next_run_time,
                    "job_state": statement.excluded.job_state,
                },
            )
        # One row per id, the last added (PostgreSQL's upsert of many rows may not touch
        # a row twice).
        self._local.connection.execute(self._upsert, list({r["id"]: r for r in rows}.values()))

    def add_job(self, job: Job) -> None:
        if getattr(self._local, "connection", None) is None:
            super().add_job(job)
            return
        self._local.rows.append(
            {
                "id": job.id,
                "next_run_time": datetime_to_utc_timestamp(job.next_run_time),
                "job_state": pickle.dumps(job.__getstate__(), self.pickle_protocol),
            }
        )

    def remove_job(self, job_id: str) -> None:
        """In a batch, a job already gone is not an error: a scheduler's pass removes the
        jobs it started, and one raise would roll back every removal of the pass. The
        removes wait for the next statement or the batch's end, and go as one."""
        if getattr(self._local, "connection", None) is None:
            super().remove_job(job_id)
            return
        self._write_added()
        self._local.removed.append(job_id)

    def update_job(self, job: Job) -> None:
        connection = self._batch()
        if connection is None:
            super().update_job(job)
            return
        connection.execute(
            self.jobs_t.update()
            .where(self.jobs_t.c.id == job.id)
            .values(
                next_run_time=datetime_to_utc_timestamp(job.next_run_time),
                job_state=pickle.dumps(job.__getstate__(), self.pickle_protocol),
            )
        )

    def remove_many(self, job_ids: Sequence[str]) -> None:
        """Remove these jobs if stored, in one statement (missing ones are fine)."""
        delete = self.jobs_t.delete().where(self.jobs_t.c.id.in_(list(job_ids)))
        connection = self._batch()
        if connection is not None:
            connection.execute(delete)
            return
        with self.engine.begin() as connection:
            connection.execute(delete)

    def get_due_jobs(self, now: datetime) -> list[Job]:
        timestamp = datetime_to_utc_timestamp(now)
        query = (
            select(self.jobs_t.c.id, self.jobs_t.c.job_state)
            .where(self.jobs_t.c.next_run_time <= timestamp)
            .order_by(self.jobs_t.c.next_run_time)
            .limit(self.max_due)
        )
        jobs: list[Job] = []
        broken: list[str] = []
        with self.engine.begin() as connection:
            for row in connection.execute(query):
                try:
                    jobs.append(self._reconstitute_job(row.job_state))
                except Exception:
                    log.exception("job.unreadable", job=row.id)
                    broken.append(row.id)
            if broken:
                connection.execute(self.jobs_t.delete().where(self.jobs_t.c.id.in_(broken)))
        return jobs
