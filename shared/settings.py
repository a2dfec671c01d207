"""Settings every service reads from the environment (see CONTRACT.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.natsauth import anonymous

#: The documented development key. A production process refuses to start with it.
DEV_ADMIN_API_KEY = "dev-admin-key-change-me"

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ServiceSettings(BaseSettings):
    """Settings common to booking, reminders and referrals."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    app_env: str = "development"
    nats_url: str = "nats://127.0.0.1:4222"
    #: Copies of every stream and of the lease bucket: 1 on one server, 3 in a cluster.
    nats_replicas: int = Field(default=1, ge=1, le=5)
    admin_api_key: str = DEV_ADMIN_API_KEY
    var_dir: Path = PROJECT_ROOT / "var"
    log_level: str = "INFO"
    #: How often the outbox relay looks for rows when nobody woke it up.
    outbox_poll_seconds: float = 1.0
    #: Deliveries of one event before it is dead-lettered.
    max_deliver: int = 5
    #: First retry delay of a failed handler; doubles each delivery.
    retry_base_seconds: float = 1.0

    @model_validator(mode="after")
    def _refuse_dev_key_in_production(self) -> ServiceSettings:
        if self.app_env == "production" and self.admin_api_key == DEV_ADMIN_API_KEY:
            raise ValueError(
                "ADMIN_API_KEY is the documented development value; "
                "set a secret key before starting with APP_ENV=production"
            )
        return self

    @model_validator(mode="after")
    def _refuse_anonymous_nats_in_production(self) -> ServiceSettings:
        # The development default connects without a user; a production NATS refuses that,
        # and a service must connect as its own user (nats://booking:<password>@host:4222).
        if self.app_env == "production" and anonymous(self.nats_url):
            raise ValueError(
                "NATS_URL carries no user and password (the development default); "
                "give the service its own NATS user: nats://<service>:<password>@host:4222"
            )
        return self

    def sqlite_url(self, name: str) -> str:
        """The default database of a service: a SQLite file under ``var/``."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{self.var_dir / name}.db"
