# One image for every Corral service: `corral SERVICE` (or CORRAL_SERVICE, from the SERVICE build
# argument) picks gateway, scheduler, session-store or model-manager.
#
# The build context holds a wheelhouse made from the workspace lock (dist/image, written by
# deploy/compose/build-images.sh, which `make images` runs): the workspace's own wheels in
# dist/image/corral (`uv build --all-packages --wheel`) and every locked dependency as a binary
# wheel in dist/image/deps (`uv export --frozen --no-dev --no-emit-workspace`, then
# `pip download --only-binary=:all:`).
# The image installs only from it (`--no-index`, hashes required), so it needs no network, no
# compiler and no uv, and holds exactly the versions uv.lock names.
#
#   deploy/compose/build-images.sh                     # wheelhouse, base image, both images
#   docker build -t corral .                           # with a wheelhouse already made
#   docker build --target standins -t corral-standins .
#
# The final image has no pip, no wheels and no build tools: only Python, the virtual environment
# /opt/corral and two small scripts, run as an unprivileged user.

ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# A virtual environment with the services' dependencies, installed from the wheelhouse alone. A
# layer of its own, so a change to Corral's code reinstalls only Corral's wheels.
FROM ${BASE_IMAGE} AS deps
COPY dist/image/deps /wheels
RUN python3 -m venv /opt/corral \
    && /opt/corral/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        --require-hashes -r /wheels/services.txt

# The services, without the installer.
FROM deps AS services-venv
COPY dist/image/corral /corral-wheels
RUN /opt/corral/bin/pip install --no-cache-dir --no-index --no-deps \
        /corral-wheels/corral_common-*.whl /corral-wheels/corral_gateway-*.whl \
        /corral-wheels/corral_scheduler-*.whl /corral-wheels/corral_model_manager-*.whl \
        /corral-wheels/corral_session_store-*.whl \
    && /opt/corral/bin/python -m pip uninstall --yes --quiet pip setuptools

# The local stand-ins' dependencies: for the Ollama emulator and SecantusDB (a MongoDB-protocol
# server, GPL-2.0-only, run as its own process) that the compose check runs where neither Ollama
# nor MongoDB images can be had. Never part of the services' image.
FROM deps AS standins-deps
RUN /opt/corral/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        --require-hashes -r /wheels/standins.txt

FROM standins-deps AS standins-venv
COPY dist/image/corral /corral-wheels
RUN /opt/corral/bin/pip install --no-cache-dir --no-index --no-deps \
        /corral-wheels/corral_common-*.whl /corral-wheels/corral_emulator-*.whl \
    && /opt/corral/bin/python -m pip uninstall --yes --quiet pip setuptools

# ---------------------------------------------------------------------------------------------
# What every final image shares: the user, the scripts, the settings a container needs.
FROM ${BASE_IMAGE} AS runtime-base
ARG SERVICE=gateway
RUN groupadd --gid 10001 corral \
    && useradd --uid 10001 --gid corral --no-log-init --home-dir /var/lib/corral \
        --no-create-home --shell /usr/sbin/nologin corral \
    && mkdir -p /var/lib/corral \
    && chown corral:corral /var/lib/corral
COPY deploy/image/corral deploy/image/corral-ready /usr/local/bin/
# Listen on every address inside the container (publish ports on loopback, or put a proxy in
# front). With CORRAL_AUTH=off the gateway refuses such an address unless CORRAL_ALLOW_OPEN=1:
# set CORRAL_AUTH=on and CORRAL_ADMIN_KEY (docker-compose.yml does).
ENV PATH=/opt/corral/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CORRAL_SERVICE=${SERVICE} \
    CORRAL_DATA_DIR=/var/lib/corral \
    CORRAL_GATEWAY_HOST=0.0.0.0 \
    CORRAL_HEALTH_HOST=0.0.0.0
WORKDIR /var/lib/corral
USER 10001:10001
ENTRYPOINT ["corral"]

# ---------------------------------------------------------------------------------------------
# `--target standins`: `corral emulator --host H --port P`, `secantusd-py --host H --port P ...`.
FROM runtime-base AS standins
COPY --from=standins-venv /opt/corral /opt/corral
HEALTHCHECK NONE
CMD ["emulator", "--host", "0.0.0.0", "--port", "11434"]

# ---------------------------------------------------------------------------------------------
# The default target: the services' image. The gateway listens on 8000; the scheduler, session
# store and model manager serve /health, /ready and /metrics on 8101, 8102 and 8103.
FROM runtime-base AS runtime
LABEL org.opencontainers.image.title="corral" \
      org.opencontainers.image.description="Corral: a shared, queue-aware, session-keeping front for Ollama"
COPY --from=services-venv /opt/corral /opt/corral
EXPOSE 8000 8101 8102 8103
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["corral-ready"]
