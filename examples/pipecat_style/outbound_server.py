"""A dial-out server of your own (as Pipecat's Telnyx guide has you write), running a callpipe bot.

It shows that a bot works outside ``callpipe serve``: this FastAPI app places the call,
answers Telnyx's TeXML request and hands the media stream to the bot, whose
``create_transport`` reads the handshake itself. (``callpipe serve`` does all of this for
you, with signed stream URLs, rate limits and webhooks; prefer it in production.)

    POST /start   {"phone_number": "+15551234567", "body": {...}}   Authorization: Bearer $OUTBOUND_API_KEY
    POST /answer  TeXML for the answered call (Telnyx fetches it)
    WS   /ws      the call's media stream

Settings (environment): ``TELNYX_API_KEY``, ``TELNYX_ACCOUNT_SID``, ``TELNYX_APPLICATION_SID``
(a TeXML application), ``TELNYX_PHONE_NUMBER``, ``PUBLIC_URL`` (the https URL Telnyx
reaches), ``OUTBOUND_API_KEY``; ``OUTBOUND_BOT`` picks the bot module (``outbound_bot``,
or ``outbound_bot_v1`` for the Pipecat 1.0 style); ``TELNYX_API_BASE_URL`` points the
REST calls at a simulator. Run: ``uvicorn outbound_server:app --port 7860``.
"""

import base64
import hashlib
import hmac
import importlib
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import Response

from callpipe.runner.types import WebSocketRunnerArguments

logger = logging.getLogger("outbound_server")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bot modules sit next to this file

# Signs the body carried through /answer and /ws, so only URLs this process made are served.
URL_SECRET = secrets.token_bytes(32)

app = FastAPI()


def _sign(body: str) -> str:
    return hmac.new(URL_SECRET, body.encode(), hashlib.sha256).hexdigest()


def _checked_body(request_body: str | None, signature: str | None) -> dict:
    if not request_body or not signature or not hmac.compare_digest(_sign(request_body), signature):
        raise HTTPException(status_code=403, detail="this URL was not issued by this server")
    return json.loads(base64.urlsafe_b64decode(request_body.encode()))


def _public_url() -> str:
    url = os.environ.get("PUBLIC_URL", "").rstrip("/")
    if not url:
        raise HTTPException(status_code=500, detail="set PUBLIC_URL to the https URL Telnyx reaches")
    return url


@app.post("/start")
async def start(request: Request) -> dict:
    """Place the call through Telnyx's TeXML Calls API."""
    expected = os.environ.get("OUTBOUND_API_KEY", "")
    given = request.headers.get("authorization", "").removeprefix("Bearer ")
    if not expected or not hmac.compare_digest(given, expected):
        raise HTTPException(status_code=401, detail="Authorization: Bearer $OUTBOUND_API_KEY required")
    data = await request.json()
    number = str(data.get("phone_number", ""))
    if not number.startswith("+") or not number[1:].isdigit():
        raise HTTPException(status_code=400, detail="phone_number must be E.164, e.g. +15551234567")
    body = base64.urlsafe_b64encode(json.dumps(data.get("body", {})).encode()).decode()
    answer_url = f"{_public_url()}/answer?body={body}&sig={_sign(body)}"
    base = os.environ.get("TELNYX_API_BASE_URL", "https://api.telnyx.com/v2").rstrip("/")
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{base}/texml/Accounts/{os.environ['TELNYX_ACCOUNT_SID']}/Calls",
            headers={"Authorization": f"Bearer {os.environ['TELNYX_API_KEY']}"},
            json={
                "ApplicationSid": os.environ["TELNYX_APPLICATION_SID"],
                "To": number,
                "From": os.environ["TELNYX_PHONE_NUMBER"],
                "Url": answer_url,
            },
        )
    if response.status_code >= 300:
        raise HTTPException(status_code=502, detail=f"Telnyx answered {response.status_code}")
    call = response.json()
    return {"status": "call_initiated", "call_sid": call.get("call_sid") or call.get("sid")}


@app.post("/answer")
async def answer(request: Request) -> Response:
    """TeXML for the answered call: stream it to /ws, the body carried along."""
    body = request.query_params.get("body")
    _checked_body(body, request.query_params.get("sig"))
    ws_url = _public_url().replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    stream = f"{ws_url}/ws?body={quote(body or '')}&amp;sig={_sign(body or '')}"
    texml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Connect>'
        f'<Stream url="{stream}" bidirectionalMode="rtp"/></Connect></Response>'
    )
    return Response(content=texml, media_type="application/xml")


@app.websocket("/ws")
async def media(websocket: WebSocket) -> None:
    """The call's media stream: run the bot with the dial-out body."""
    await websocket.accept()
    try:
        body = _checked_body(websocket.query_params.get("body"), websocket.query_params.get("sig"))
    except HTTPException:
        await websocket.close(code=1008, reason="this URL was not issued by this server")
        return
    bot_module = importlib.import_module(os.environ.get("OUTBOUND_BOT", "outbound_bot"))
    await bot_module.bot(WebSocketRunnerArguments(websocket=websocket, body=body))
