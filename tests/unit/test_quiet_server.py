"""The services' uvicorn server looks at its state once a second (idle CPU), yet a signal
still stops it at once: a deploy or ``make run``'s Ctrl-C does not wait for the next look."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from shared.natsd import free_port
from shared.settings import PROJECT_ROOT

#: A bare app under ``QuietServer`` whose look comes every 60 s: only the signal's wake-up
#: can end it quickly.
SERVE = """
import sys, uvicorn
from shared.service import QuietServer

async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

QuietServer.TICK_SECONDS = 60.0
QuietServer(uvicorn.Config(app, port=int(sys.argv[1]), lifespan="off", log_level="warning")).run()
"""


def test_a_signal_stops_the_quiet_server_at_once_not_at_its_next_look() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 204:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "the server did not start"
            assert time.monotonic() < deadline, "the server did not answer in 30 s"
            time.sleep(0.05)
        asked = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert time.monotonic() - asked < 5, "the stop waited for the server's next look"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
