"""``python -m tools.twilio_sandbox``: serve the sandbox on SANDBOX_HOST:SANDBOX_PORT."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .settings import SandboxSettings


def main() -> None:
    settings = SandboxSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
