# syntax=docker/dockerfile:1
#
# imapsvc image: `docker build -t imapsvc:0.1.0 .` (BuildKit, the default since
# Docker 23). See docs/deploy.md.
#
# Stage 1 builds wheels of imapsvc and every dependency; stage 2 installs them
# with no index (so the runtime image has no compiler and no source tree) and
# builds Twisted's plugin cache, so the container runs with a read-only root
# filesystem as user 10001.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from (see .dockerignore): a change to tests or
# docs does not invalidate this layer.
COPY setup.py ./
COPY imapsvc ./imapsvc
COPY twisted ./twisted
COPY schema ./schema
RUN pip wheel --wheel-dir /wheels . \
 && ls /wheels/imapsvc-*.whl

# -- runtime --------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="imapsvc" \
      org.opencontainers.image.description="Turns mail arriving in IMAP folders into workflow events"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IMAPSVC_LOG_FORMAT=json \
    PORT=8080

RUN groupadd --system --gid 10001 imapsvc \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/imapsvc --shell /usr/sbin/nologin imapsvc \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/imapsvc

# A real (non-editable) install from the wheels of stage 1; the wheels stay out
# of the image's layers. Then write twisted/plugins/dropin.cache as root: at run
# time site-packages is read-only, and the plugin scan must find the cache up
# to date instead of trying to write it. The last two commands fail the build
# if the plugin is not found or the cache was not written.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels imapsvc \
 && python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))' \
 && python -c 'import os, twisted.plugins as p; assert any(os.path.isfile(os.path.join(d, "dropin.cache")) for d in p.__path__)' \
 && twistd imapsvc --help >/dev/null

# Only used by the embedded SQLite store / JSONL sink (DATABASE_URL and
# REDIS_URL unset), e.g. a local `docker run`. Kubernetes sets both.
WORKDIR /var/lib/imapsvc
USER 10001:10001
EXPOSE 8080

# Liveness for plain Docker; Kubernetes uses its own probes (k8s/deployment.yaml).
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]

# Exec form: twistd is PID 1 and receives SIGTERM itself, then shuts down
# within IMAP_SHUTDOWN_TIMEOUT_MS. `--pidfile=` (empty) writes no pidfile,
# which a read-only root filesystem would refuse. `-n`: stay in the foreground,
# log to stdout.
ENTRYPOINT ["twistd", "-n", "--pidfile=", "imapsvc"]
