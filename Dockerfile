# syntax=docker/dockerfile:1
# Multi-stage: locked dependencies first (cached layer), the source second, non-root at run time.
FROM python:3.11-slim AS build
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY features ./features
COPY models ./models
COPY training ./training
COPY service ./service
RUN uv sync --locked --no-dev

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 nextstep
COPY --from=build --chown=nextstep:nextstep /app /app
ENV PATH=/app/.venv/bin:$PATH NEXTSTEP_HOME=/data PYTHONUNBUFFERED=1
RUN mkdir -p /data && chown nextstep:nextstep /data
USER nextstep
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["nextstep", "serve"]
CMD ["--catalog", "/data/catalog.yaml", "--host", "0.0.0.0", "--port", "8000"]
