"""A local stand-in for Twilio's Messaging API, for development and tests.

Run it with ``python -m tools.twilio_sandbox``; see README.md beside this file.
"""

from .app import create_app
from .client import sandbox_client
from .runner import serve_in_thread
from .settings import SandboxSettings

__all__ = ["SandboxSettings", "create_app", "sandbox_client", "serve_in_thread"]
