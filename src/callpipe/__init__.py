"""callpipe: real-time voice AI agents on Telnyx phone calls.

The package is layered; each sub-package depends only on the ones listed before it:

* :mod:`callpipe.telnyx` - the Telnyx wire protocol (sans-I/O) and REST client
* :mod:`callpipe.audio` - telephony codecs, resampling and voice activity detection
* :mod:`callpipe.pipeline` - frames, processors and the pipeline task
* :mod:`callpipe.transports` - WebSocket transports that move frames to and from a call
* :mod:`callpipe.services` - speech-to-text, LLM and text-to-speech providers
* :mod:`callpipe.server` - the FastAPI application (TeXML, ``/ws``, ``/start``, webhooks)
* :mod:`callpipe.sim` - the Telnyx simulator (fake caller and fake Telnyx API)
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ``callpipe.serve_app`` without importing uvicorn and FastAPI for every ``import callpipe``.
    if name == "serve_app":
        from callpipe.server.limits import serve_app

        return serve_app
    raise AttributeError(f"module 'callpipe' has no attribute {name!r}")
