# syntax=docker/dockerfile:1
# The kioskfleet agent image (docs/packaging.md): for terminals that run containers and for
# simulated fleets. A terminal on Debian takes the .deb instead (scripts/build_agent_deb.py),
# which brings the A/B launcher; here a new agent is a new image, the launcher is not used.
#   docker build -f docker/agent.Dockerfile -t kioskfleet-agent:0.1.0 .
#   docker run -v /etc/kioskfleet:/etc/kioskfleet:ro -v kf-agent:/var/lib/kioskfleet \
#       kioskfleet-agent:0.1.0
# Base pinned to an exact tag; pin the digest as in docker/server.Dockerfile.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10002 kioskfleet \
    && useradd --system --uid 10002 --gid kioskfleet --home-dir /var/lib/kioskfleet \
        --no-create-home --shell /usr/sbin/nologin kioskfleet \
    && install -d -o kioskfleet -g kioskfleet -m 0750 /var/lib/kioskfleet
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels /wheels/kioskfleet-*.whl
# The configuration (terminal id, broker, TLS files) is mounted read-only at /etc/kioskfleet;
# the outbox, the key and the update state live in the /var/lib/kioskfleet volume.
WORKDIR /var/lib/kioskfleet
VOLUME ["/var/lib/kioskfleet"]
USER 10002:10002
ENTRYPOINT ["kioskfleet", "agent"]
CMD ["--config", "/etc/kioskfleet/agent.toml"]
