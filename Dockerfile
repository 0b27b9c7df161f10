# callpipe serve in a container.
#
#   docker build -t callpipe .
#   docker run --rm -p 8000:8000 --env-file .env \
#       -v "$PWD/bot.py:/app/bot.py:ro" -v callpipe-data:/data --stop-timeout 40 callpipe
#
# The bot is not part of the image: mount it at /app/bot.py as above (for instance
# examples/dial_in_bot.py), or build an image on top of this one (FROM callpipe, then
# COPY bot.py /app/bot.py). Without a bot file (CMD ["callpipe", "serve", ...] without
# it) the built-in assistant runs on the providers whose keys are set. Settings come
# from the environment (see .env.example); PUBLIC_URL must be the https URL Telnyx
# reaches, with TLS terminated in front of the container. deploy/ has a compose file and
# Kubernetes manifests for several instances on PostgreSQL.
#
# Extras: "openai" (the built-in assistant's LLM client) by default; the database
# drivers (aiosqlite, asyncpg) are part of callpipe itself. Add "local" for the embedded
# offline models: docker build --build-arg EXTRAS=openai,local -t callpipe .
#
# Call records: SQLite in /data by default (mount a volume there), or PostgreSQL with
# DATABASE_URL=postgresql://... (what several instances need).
#
# Shutdown: SIGTERM drains calls for SHUTDOWN_GRACE_SECS (default 30), so give the
# container longer than that to stop (--stop-timeout / stop_grace_period /
# terminationGracePeriodSeconds); Docker's default of 10 s would cut live calls short.

FROM python:3.11-slim

ARG EXTRAS=openai

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data

WORKDIR /app

# Everything the wheel is built from (see .dockerignore for what stays out).
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install ".[${EXTRAS}]" && rm -rf /app/src

# An unprivileged user; /app stays root-owned and read-only to it, /data is its own.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin callpipe \
    && mkdir -p /data && chown callpipe:callpipe /data
USER callpipe
VOLUME ["/data"]

EXPOSE 8000

# Liveness (/livez answers 200 also while draining, so a container finishing its calls is
# not reported unhealthy); load balancers should use /readyz, which turns 503 while
# draining or at MAX_CALLS.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2)"]

# Exec form: callpipe is PID 1 and gets SIGTERM itself.
CMD ["callpipe", "serve", "/app/bot.py", "--host", "0.0.0.0", "--port", "8000"]
