# Image of vss-dispatcher. The same image runs the VSS emulator for trials:
#   docker run IMAGE twistd --nodaemon --pidfile= vss-emulator --endpoint tcp:8080

# Builder: turns the pinned requirements and the package into wheels, so the
# final stage installs them without pip ever building anything there. Every
# pinned requirement publishes wheels for amd64 and arm64, so no compiler is
# needed; on another architecture, install build-essential and libffi-dev here.
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src

# Requirements first: this layer stays cached until requirements.txt changes.
COPY requirements.txt ./
RUN pip wheel --wheel-dir /wheels -r requirements.txt \
    && cp requirements.txt /wheels/

COPY pyproject.toml MANIFEST.in README.md ./
COPY vss_dispatcher ./vss_dispatcher
COPY twisted ./twisted
RUN pip wheel --no-deps --wheel-dir /wheels .


FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# --no-index: only the wheels made above, at the pinned versions. The wheels
# are mounted for this step alone (a BuildKit feature; BuildKit is Docker's
# default builder), so they take no room in the image.
#
# Listing the plugins as root writes Twisted's plugin cache (dropin.cache) now.
# At run time site-packages is read-only to the service user, and a stale cache
# would make twistd log a write failure on every start. Asking for the plugin's
# help proves that twistd finds it.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels \
        -r /wheels/requirements.txt /wheels/vss_dispatcher-*.whl \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && twistd vss-dispatcher --help > /dev/null

# A fixed numeric id, so that volume permissions and Kubernetes' runAsNonRoot
# can rely on it. /var/lib/vss-dispatcher is the one writable place, for
# PLAY_LOG (for example PLAY_LOG=/var/lib/vss-dispatcher/plays.jsonl).
RUN groupadd --system --gid 10001 vss-dispatcher \
    && useradd --system --uid 10001 --gid vss-dispatcher \
        --home-dir /var/lib/vss-dispatcher --no-create-home \
        --shell /usr/sbin/nologin vss-dispatcher \
    && install -d -o vss-dispatcher -g vss-dispatcher -m 0750 /var/lib/vss-dispatcher

WORKDIR /var/lib/vss-dispatcher

# The code's default listens on 127.0.0.1 only, which inside a container means
# nothing outside it could reach the status page or the metrics. The
# container's own network namespace already fences the port off: it is
# reachable from other containers of the same network (a Prometheus scraper)
# and from the host only where a port is published. The HEALTHCHECK below
# runs inside the container, so it works with either choice.
ENV STATUS_ENDPOINT=tcp:8089
EXPOSE 8089

USER 10001:10001

# urllib rather than curl: the slim image has no curl, and Python is here
# anyway. An HTTP error status or a refused connection raises, which exits 1.
# Change the port here too if STATUS_ENDPOINT moves off 8089.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8089/healthz', timeout=4)"]

# twistd stops the service cleanly on SIGTERM, which is what docker stop sends.
CMD ["twistd", "--nodaemon", "--pidfile=", "vss-dispatcher"]
