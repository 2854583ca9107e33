# syntax=docker/dockerfile:1
# Multi-stage: locked dependencies first (cached layer), the source second, non-root at run time.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md LICENSE ./
RUN uv sync --locked --no-dev --no-install-project
COPY features ./features
COPY models ./models
COPY evaluation ./evaluation
COPY training ./training
COPY simulation ./simulation
COPY service ./service
COPY loop ./loop
COPY nextstep ./nextstep
RUN uv sync --locked --no-dev

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
RUN groupadd --gid 10001 nextstep && useradd --create-home --uid 10001 --gid 10001 nextstep
# root owns the code: the runtime user can read and run it, never change it
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH NEXTSTEP_HOME=/data PYTHONUNBUFFERED=1
RUN mkdir -p /data && chown 10001:10001 /data
# State (SQLite store, MLflow file store, model cache) lives under NEXTSTEP_HOME=/data unless
# NEXTSTEP_DATABASE_URL / MLFLOW_TRACKING_URI point elsewhere: mount a volume there.
VOLUME ["/data"]
# Numeric uid:gid, so a runtime (Kubernetes runAsNonRoot) can verify it is not root.
USER 10001:10001
WORKDIR /app
EXPOSE 8000
# Ready = model and store usable (/readyz); the serve command below listens on port 8000.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["nextstep", "serve"]
CMD ["--catalog", "/data/catalog.yaml", "--host", "0.0.0.0", "--port", "8000"]
