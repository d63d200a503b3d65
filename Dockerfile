# syntax=docker/dockerfile:1
# The quart-chat image. `docker compose up -d` (compose.yaml) runs it with Redis;
# see README "Deploy with Docker". No secrets are baked in: they come from the
# environment at run time, and .dockerignore keeps .env out of the build context.

# Both stages use the same base (tests/test_deploy.py checks), so the venv built
# in the first finds its interpreter at the same path in the second. Python 3.11
# is what CI runs the same install steps with.
FROM python:3.11-slim-bookworm AS builder
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer is rebuilt when the
# dependency list changes, not on every code edit.
COPY deploy/install.sh /usr/local/bin/install-quart-chat
COPY pyproject.toml ./
RUN install-quart-chat deps /app/.venv
# Then the source, built into a wheel and installed into the same venv
# (non-editable: the package carries its templates/ and static/).
COPY . .
RUN install-quart-chat app /app/.venv

FROM python:3.11-slim-bookworm
# A fixed numeric uid/gid, so orchestrators can check that it is not root.
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid chat --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin chat \
    && install -d -o chat -g chat -m 700 /app/var
WORKDIR /app
# Root-owned and read-only to the app user: the process cannot modify its own code.
COPY --from=builder /app/.venv /app/.venv
# CHAT_DATA_DIR only matters without CHAT_SECRET_KEY / CHAT_REDIS_URL (a plain
# `docker run` trial with the embedded Redis); compose sets both.
# CHAT_WORKERS is read by CMD below, not by the app.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHAT_DATA_DIR=/app/var \
    CHAT_WORKERS=2
USER 10001:10001
EXPOSE 9990
# No curl in slim images: the venv's Python asks /healthz, which is 200 only
# while Redis answers and the worker is subscribed to its pub/sub (it can chat);
# urlopen raises (exit 1) on a 503 or a refused connection.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9990/healthz', timeout=4)"]
# Exec form, and `exec` in the shell that only expands CHAT_WORKERS: the shell
# replaces itself, so the launcher is PID 1 and receives `docker stop`'s SIGTERM
# directly. It stops the Hypercorn workers gracefully (5 s grace) and exits 0,
# well inside Docker's 10 s before SIGKILL. compose.yaml adds `init: true`
# (tini as PID 1) to reap any stray child processes as well.
CMD ["/bin/sh", "-c", "exec quart-chat serve --bind 0.0.0.0:9990 --workers \"${CHAT_WORKERS:-2}\""]
