"""Referrals' settings: the common ones plus its port, database, secret key, deadlines, delivery."""

from __future__ import annotations

import base64
from pathlib import Path

from pydantic import Field, model_validator

from shared.db import async_url, sync_url
from shared.settings import ServiceSettings

#: The documented development key that encrypts webhook secrets at rest (a Fernet key:
#: 32 url-safe base64 bytes). A process started with ``APP_ENV=production`` refuses it.
DEV_SECRET_KEY = "ZGV2LXJlZmVycmFscy1rZXktY2hhbmdlLW1lLTAwMDA="  # noqa: S105 (documented dev value)


class ReferralsSettings(ServiceSettings):
    referrals_port: int = 8003
    referrals_host: str = "127.0.0.1"
    referrals_database_url: str | None = None
    #: Where APScheduler keeps its jobs. Default: the referrals database on PostgreSQL; on
    #: SQLite a sibling file (``referrals-jobs.db``), see :attr:`jobstore_url`.
    referrals_jobstore_url: str | None = None
    public_base_url: str | None = None
    #: Wins over ``PUBLIC_BASE_URL`` when the services sit behind different public URLs.
    referrals_public_base_url: str | None = None
    #: Fernet key(s) for webhook secrets at rest; comma-separated to rotate (first encrypts).
    referrals_secret_key: str = DEV_SECRET_KEY
    #: The requester named in FHIR resources sent to partners.
    referrals_clinic_name: str = "Medical massage clinic"
    default_phone_region: str = "US"
    migrate_on_start: bool = True

    #: A referral not accepted this long after it was sent gets a reminder to the partner…
    referrals_accept_hours: float = Field(default=72.0, gt=0)
    #: …and expires this long after that reminder was due.
    referrals_expire_after_hours: float = Field(default=48.0, gt=0)

    #: A webhook is retried with backoff for this long, then the delivery has failed.
    referrals_webhook_retry_hours: float = Field(default=24.0, gt=0)
    referrals_webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    #: First retry delay; doubles each attempt up to the maximum (±10 % jitter).
    referrals_webhook_backoff_seconds: float = Field(default=10.0, gt=0)
    referrals_webhook_backoff_max_seconds: float = Field(default=1800.0, gt=0)
    #: Webhooks in flight at once, per process.
    referrals_webhook_concurrency: int = Field(default=16, ge=1, le=256)
    #: How often the dispatcher looks for due deliveries when nobody woke it up.
    referrals_delivery_poll_seconds: float = Field(default=5.0, gt=0)

    #: Run the deadline scheduler in this process (it still waits for the lease).
    referrals_scheduler: bool = True
    referrals_lease_bucket: str = "leases"
    referrals_lease_key: str = "referrals-scheduler"
    referrals_lease_ttl_seconds: int = Field(default=15, ge=1)
    #: How often the active scheduler looks for referrals whose deadlines it has not planned.
    referrals_deadline_poll_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _usable_secret_key(self) -> ReferralsSettings:
        keys = [k.strip() for k in self.referrals_secret_key.split(",") if k.strip()]
        if not keys:
            raise ValueError("REFERRALS_SECRET_KEY is empty")
        for key in keys:
            try:  # what Fernet(key) checks, without loading cryptography at start
                if len(base64.urlsafe_b64decode(key.encode())) != 32:
                    raise ValueError("not 32 bytes")
            except ValueError as exc:
                raise ValueError(
                    "REFERRALS_SECRET_KEY must be Fernet keys (32 url-safe base64 bytes), "
                    "comma-separated; make one with: python -c 'from cryptography.fernet "
                    "import Fernet; print(Fernet.generate_key().decode())'"
                ) from exc
        return self

    def development_defaults(self) -> list[str]:
        found = super().development_defaults()
        if DEV_SECRET_KEY in [k.strip() for k in self.referrals_secret_key.split(",")]:
            found.append("REFERRALS_SECRET_KEY is the documented development value")
        return found

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    @property
    def database_url(self) -> str:
        return self.referrals_database_url or self.sqlite_url("referrals")

    @property
    def jobstore_url(self) -> str:
        """A blocking SQLAlchemy URL for APScheduler's job store.

        On PostgreSQL the job table lives in the referrals database. On SQLite it gets a
        sibling file: AsyncIOScheduler writes its jobs synchronously on the event loop, and
        SQLite locks the whole file, so a job-store write that waits for a write transaction
        the event loop itself must finish would stall both until the busy timeout.
        """
        if self.referrals_jobstore_url:
            return sync_url(self.referrals_jobstore_url)
        url = async_url(self.database_url)
        if not url.startswith("sqlite"):
            return sync_url(url)
        prefix, _, path = url.partition(":///")
        db_path = Path(path)
        jobs = db_path.with_name(f"{db_path.stem}-jobs{db_path.suffix or '.db'}")
        return sync_url(f"{prefix}:///{jobs}")

    @property
    def base_url(self) -> str:
        url = (
            self.referrals_public_base_url
            or self.public_base_url
            or f"http://127.0.0.1:{self.referrals_port}"
        )
        return url.rstrip("/")
