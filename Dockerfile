# One image for every image-mirror service; docker-compose.yml picks the module to run.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients ./clients
COPY servicekit ./servicekit
COPY registry_client ./registry_client
COPY policy_service ./policy_service
COPY transfer_service ./transfer_service
COPY scanner ./scanner
COPY gateway ./gateway
COPY stack ./stack
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /data mirror \
 && mkdir -p /data && chown mirror /data
USER mirror
WORKDIR /data
# Default: everything in one process. Compose overrides the command per service.
EXPOSE 50051 8080
CMD ["mirror-stack", "--data", "/data", "--grpc-listen", "0.0.0.0:50051", "--http-listen", "0.0.0.0:8080", "--webhook-secret-file", "/run/secrets/webhook_secret"]
