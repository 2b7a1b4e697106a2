# One image for every pipeline service: init, worker, beat, flower (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIPELINE_HOME=/var/lib/pipeline

# Non-root user (uid 1000). The directories are created here, owned by it, because an
# empty named volume mounted on them copies this ownership on first use.
RUN groupadd --gid 1000 pipeline \
 && useradd --uid 1000 --gid pipeline --create-home --shell /usr/sbin/nologin pipeline \
 && mkdir -p /var/lib/pipeline /data/datastore /data/tasks \
 && chown -R pipeline:pipeline /var/lib/pipeline /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY workers/ workers/
COPY config/ config/
RUN pip install --no-cache-dir . \
 && rm -rf build *.egg-info

USER pipeline
CMD ["pipeline", "--help"]
