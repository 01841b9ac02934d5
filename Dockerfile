# One image for every image-mirror service; docker-compose.yml and deploy/ pick what to run.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src

# Dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d['dependencies'] + d['optional-dependencies']['server']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY clients ./clients
COPY servicekit ./servicekit
COPY registry_client ./registry_client
COPY policy_service ./policy_service
COPY transfer_service ./transfer_service
COPY scanner ./scanner
COPY gateway ./gateway
COPY console ./console
COPY stack ./stack
# /key: where compose mounts the key volume the replicas of a service share (the transfer
# workers', the gateways'); a new named volume takes the owner of its mount point in the
# image, so the first replica can create the key there.
RUN pip install --no-deps . \
 && useradd --system --uid 10001 --home-dir /data mirror \
 && mkdir -p /data /key && chown mirror /data /key && chmod 0700 /key

USER mirror
WORKDIR /data
EXPOSE 50051 8080
# The gRPC health service needs no token; a service container overrides the address.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-m", "servicekit.healthcheck", "127.0.0.1:50051"]
# Default: everything in one process, reachable from outside the container, so it refuses to
# start without bearer tokens (mount them at /run/secrets/tokens: "admin:TOKEN" lines) and the
# webhook secret. Compose and the Kubernetes manifests override the command per service.
CMD ["mirror-stack", "--data", "/data", "--grpc-listen", "0.0.0.0:50051", \
     "--http-listen", "0.0.0.0:8080", "--tokens-file", "/run/secrets/tokens", \
     "--webhook-secret-file", "/run/secrets/webhook_secret"]
