# One image for the bridge and every worker pool; only the command differs:
#   python -m workers.bridge          the NATS -> Dramatiq bridge (the default)
#   python -m workers.run POOL        a worker pool: enrich, publish, timescale or graph
#   etl migrate | etl health ...      the operator's CLI; `dramatiq` is on PATH too
# tests/unit/test_deploy.py holds this file to the code (commands, ports, user); no Docker is needed for that.

# Build stage: a virtualenv with the pinned dependencies and the package itself. Both stages use the same base
# image, so the venv's interpreter links stay valid when it is copied across.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer, so a code change does not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY pyproject.toml .
COPY etl etl
COPY workers workers
# --no-deps: requirements.txt, pinned, is the only source of dependencies.
RUN pip install --no-deps .

# Runtime stage: the venv, the thin launchers and an unprivileged user; no compilers, no pip cache, no sources.
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 etl \
 && useradd --system --uid 10001 --gid etl --no-create-home --home-dir /app --shell /usr/sbin/nologin etl
COPY --from=build /opt/venv /opt/venv
COPY bin/_python bin/bridge bin/worker /app/bin/
WORKDIR /app
# Numeric, so that orchestrators can verify "not root" without reading /etc/passwd.
USER 10001:10001
# HEALTH_PORT: the bridge's /healthz, /readyz and /metrics. METRICS_PORT: a worker pool's /metrics.
EXPOSE 8080 9191
# Checks the default command, the bridge. Whoever runs a pool sets its own: `etl health --pool POOL`
# (docker-compose.yml does). The timeout covers the probe's 3 s HTTP and 5 s Redis connect timeouts.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["etl", "health", "--pool", "bridge"]
CMD ["python", "-m", "workers.bridge"]
