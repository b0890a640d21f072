# syntax=docker/dockerfile:1
# The kioskfleet server image (docs/packaging.md). From the top of the checkout:
#   docker build -f docker/server.Dockerfile -t kioskfleet-server:0.1.0 .
# The base is pinned to an exact tag; pin its digest too where images are built:
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm   (the "Digest:" line)
#   docker build --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest> ...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# -- build: the kioskfleet wheel and the wheels of its dependencies ----------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime: the wheels installed into the slim image, nothing else from the build ------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 kioskfleet \
    && useradd --system --uid 10001 --gid kioskfleet --home-dir /var/lib/kioskfleet \
        --no-create-home --shell /usr/sbin/nologin kioskfleet \
    && install -d -o kioskfleet -g kioskfleet -m 0750 /var/lib/kioskfleet
# The wheels are bind-mounted from the build stage: no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels /wheels/kioskfleet-*.whl
COPY docker/healthcheck.py /usr/local/bin/kioskfleet-healthcheck
# Settings come from KIOSKFLEET_* at run time (docs/server.md); secrets are mounted files
# (KIOSKFLEET_*_FILE paths), never build arguments or ENV here. The only writes are to
# /var/lib/kioskfleet (the SQLite default; PostgreSQL via KIOSKFLEET_DATABASE_URL) and /tmp.
ENV KIOSKFLEET_HTTP_HOST=0.0.0.0 \
    KIOSKFLEET_HTTP_PORT=8080 \
    KIOSKFLEET_DATABASE_URL=sqlite:////var/lib/kioskfleet/kioskfleet.db
WORKDIR /var/lib/kioskfleet
VOLUME ["/var/lib/kioskfleet"]
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-I", "/usr/local/bin/kioskfleet-healthcheck"]
ENTRYPOINT ["kioskfleet", "server"]
