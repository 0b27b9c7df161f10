"""``callpipe demo --serve``: after the demo call, keep a server up with the console on it."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any
from urllib.parse import quote

__all__ = ["keep_serving", "urls"]


def urls(base_url: str, call_control_id: str | None) -> dict[str, str]:
    """The console's addresses: the dashboard, the call just held, the softphone."""
    found = {"dashboard": f"{base_url}/dashboard", "phone": f"{base_url}/phone"}
    if call_control_id:
        found["call"] = f"{base_url}/dashboard/calls/{quote(call_control_id, safe=':')}"
    return found


async def keep_serving(
    *, port: int, call_control_id: str | None, callers: dict[str, str], stop_secs: float
) -> None:
    """Serve the built-in assistant with the console on 127.0.0.1:``port`` until Ctrl-C.

    The records are in the store the demo's server wrote (``DATA_DIR``), so the call just
    held has its page; ``/phone`` talks to the same receptionist (``callers`` maps numbers
    to names). The console password is ``CONSOLE_PASSWORD``, or a random one printed here.
    """
    import uvicorn

    from callpipe.server.app import create_app
    from callpipe.server.settings import ServerSettings
    from callpipe.services.assistant import AssistantConfig, run_assistant
    from callpipe.services.scripted import OfficeInfo

    password = os.environ.get("CONSOLE_PASSWORD") or secrets.token_urlsafe(12)
    config = AssistantConfig(office=OfficeInfo(callers=callers), vad_stop_secs=stop_secs)

    async def bot(runner_args: Any) -> None:
        await run_assistant(runner_args, config)

    settings = ServerSettings(
        public_url=f"http://127.0.0.1:{port}",
        callpipe_secret=secrets.token_urlsafe(24),  # type: ignore[arg-type]
        console_password=password,  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(bot, settings), host="127.0.0.1", port=port, log_level="warning")
    )
    found = urls(f"http://127.0.0.1:{port}", call_control_id)
    print("\nThe console is serving (Ctrl-C to stop):", flush=True)
    if "call" in found:
        print(f"  this call:  {found['call']}", flush=True)
    print(f"  dashboard:  {found['dashboard']}", flush=True)
    print(f"  softphone:  {found['phone']}", flush=True)
    print(f"  password:   {password}", flush=True)
    serving = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        # Cancelled (by a test or an embedding program): shut down as on Ctrl-C, then go.
        server.should_exit = True
        await serving
        raise
