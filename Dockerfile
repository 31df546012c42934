# One image for the four services; docker-compose.yml picks the service with its command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY cli/ cli/
COPY services/ services/
# /data: a service's generated secrets (a named volume takes over this folder's owner).
RUN pip install . && useradd --system --uid 10001 clm && mkdir /data && chown clm /data

USER clm
ENV CLM_HOST=0.0.0.0 CLM_LOG_FORMAT=json
CMD ["python", "-m", "ingest"]
