# syntax=docker/dockerfile:1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    ZENZEFI_INSTANCE_PATH=/app/instance

WORKDIR /app

RUN groupadd --system --gid 10001 zenzefi \
    && useradd --system --uid 10001 --gid zenzefi --home-dir /app --no-create-home --shell /usr/sbin/nologin zenzefi

COPY setup.cfg pyproject.toml README.md ./
COPY zenzefi_backend/ zenzefi_backend/
COPY worker/ worker/
RUN pip install --no-cache-dir . \
    && rm -rf build zenzefi_backend.egg-info

COPY migrations/ migrations/
COPY wsgi.py gunicorn.conf.py ./

# gunicorn's on_starting hook wipes the metrics dir, but RQ workers and `flask` commands don't run
# that hook and prometheus_client refuses to start if the directory is missing, so create it here.
# ZENZEFI_INSTANCE_PATH is pinned because an installed package would otherwise get an instance
# folder under /usr/local/var, which the non-root user cannot create.
RUN mkdir -p "$ZENZEFI_INSTANCE_PATH" "$PROMETHEUS_MULTIPROC_DIR" \
    && chown zenzefi:zenzefi "$ZENZEFI_INSTANCE_PATH" "$PROMETHEUS_MULTIPROC_DIR"

USER zenzefi

EXPOSE 8000

CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
