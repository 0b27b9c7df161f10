# callpipe serve in a container.
#
#   docker build -t callpipe .
#   docker run --rm -p 8000:8000 --env-file .env \
#       -v "$PWD/bot.py:/app/bot.py:ro" --stop-timeout 40 callpipe
#
# The bot is not part of the image: mount it at /app/bot.py as above (for instance
# examples/dial_in_bot.py), or build an image on top of this one (FROM callpipe, then
# COPY bot.py /app/bot.py). Settings come from the environment (see .env.example);
# PUBLIC_URL must be the https URL Telnyx reaches, with TLS terminated in front of the
# container.
#
# Shutdown: SIGTERM drains calls for SHUTDOWN_GRACE_SECS (default 30), so give the
# container longer than that to stop (--stop-timeout / stop_grace_period /
# terminationGracePeriodSeconds); Docker's default of 10 s would cut live calls short.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Everything the wheel is built from (see .dockerignore for what stays out).
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install . && rm -rf /app/src

# An unprivileged user; /app stays root-owned and read-only to it.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin callpipe
USER callpipe

EXPOSE 8000

# /healthz answers 503 while draining, so a draining container reports unhealthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# Exec form: callpipe is PID 1 and gets SIGTERM itself.
CMD ["callpipe", "serve", "/app/bot.py", "--host", "0.0.0.0", "--port", "8000"]
