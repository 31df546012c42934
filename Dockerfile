# One image for the four services; docker-compose.yml picks the service with its command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY cli/ cli/
COPY services/ services/
RUN pip install . && useradd --system --uid 10001 clm

USER clm
ENV CLM_HOST=0.0.0.0 CLM_LOG_FORMAT=json
CMD ["python", "-m", "ingest"]
