# syntax=docker/dockerfile:1
# Build stage: resolve the locked runtime dependencies into a virtualenv.
FROM python:3.11-slim AS build
ENV UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY pyproject.toml uv.lock .python-version ./
# Runtime dependencies only: no dev tools, no embedded servers.
RUN uv sync --frozen --no-default-groups --no-install-project

# Final stage: the interpreter, the virtualenv and the code; no compilers, no uv.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin audit \
    # The trail's signing key lives here (compose mounts a volume): the service's alone.
    && mkdir -p /run/trail && chown audit /run/trail && chmod 0700 /run/trail
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY pyproject.toml ./
COPY service ./service
COPY migrations ./migrations
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8000
USER audit
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["faststream", "run", "service.main:app"]
