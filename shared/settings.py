"""Settings every service reads from the environment (see CONTRACT.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.natsauth import anonymous

#: The documented development key. A production process refuses to start with it.
DEV_ADMIN_API_KEY = "dev-admin-key-change-me"

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# -- environment and hostile input (security) --------------------------------------------
AppEnv = Literal["development", "test", "production"]
APP_ENVS: tuple[str, ...] = ("development", "test", "production")
#: Request bodies larger than this get 413 before anything reads them (see shared/http.py).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class ServiceSettings(BaseSettings):
    """Settings common to booking, reminders and referrals."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    app_env: AppEnv = "development"
    nats_url: str = "nats://127.0.0.1:4222"
    #: Copies of every stream and of the lease bucket: 1 on one server, 3 in a cluster.
    nats_replicas: int = Field(default=1, ge=1, le=5)
    admin_api_key: str = DEV_ADMIN_API_KEY
    var_dir: Path = PROJECT_ROOT / "var"
    log_level: str = "INFO"
    #: How often the outbox relay looks for rows when nobody woke it up.
    outbox_poll_seconds: float = 5.0
    #: Deliveries of one event before it is dead-lettered.
    max_deliver: int = 5
    #: First retry delay of a failed handler; doubles each delivery.
    retry_base_seconds: float = 1.0

    # -- environment and hostile input (security) ----------------------------------------
    #: Larger request bodies get 413 before they are read (routes may allow more).
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    #: ``host:port`` pairs outbound requests (calendar links, partner webhooks) may reach
    #: although they resolve to loopback, private or link-local addresses (comma-separated).
    outbound_allowed_hosts: str = ""

    @field_validator("app_env", mode="before")
    @classmethod
    def _known_env(cls, value: object) -> object:
        if value not in APP_ENVS:
            raise ValueError(
                f"APP_ENV must be exactly one of {', '.join(APP_ENVS)} (lower case); got {value!r}"
            )
        return value

    def development_defaults(self) -> list[str]:
        """The settings still at a documented development value, each named with why.

        Subclasses extend the list with their own secrets; production refuses them all.
        """
        found = []
        if self.admin_api_key == DEV_ADMIN_API_KEY:
            found.append("ADMIN_API_KEY is the documented development value")
        if anonymous(self.nats_url):
            # A production NATS refuses anonymous clients: each service connects as its own user.
            found.append(
                "NATS_URL carries no user and password (the development default); give the "
                "service its own NATS user: nats://<service>:<password>@host:4222"
            )
        return found

    @model_validator(mode="after")
    def _refuse_development_defaults_in_production(self) -> ServiceSettings:
        if self.app_env != "production":
            return self
        found = self.development_defaults()
        if found:
            raise ValueError(
                "APP_ENV=production refuses to start while development defaults are in "
                "force: " + "; ".join(found) + ". Set real values (or use APP_ENV=development)."
            )
        return self

    @property
    def allowed_outbound_hosts(self) -> frozenset[str]:
        """``OUTBOUND_ALLOWED_HOSTS`` as a set of lower-case ``host:port`` strings."""
        return frozenset(
            part.strip().lower() for part in self.outbound_allowed_hosts.split(",") if part.strip()
        )

    # -- end of the security block ---------------------------------------------------------

    def sqlite_url(self, name: str) -> str:
        """The default database of a service: a SQLite file under ``var/``."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{self.var_dir / name}.db"
