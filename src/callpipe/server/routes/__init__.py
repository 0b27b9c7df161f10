"""The public app's routes, one router per area (``create_app`` assembles them).

* :mod:`.telnyx`: what Telnyx fetches and posts (``/texml``, ``/answer``, ``/webhooks/telnyx``).
* :mod:`.dial_out`: ``POST /start``, placing an outbound call.
* :mod:`.media`: ``/ws``, one call's media stream and its bot.
"""
