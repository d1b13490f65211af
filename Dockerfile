# syntax=docker/dockerfile:1
# asgi_todo: gunicorn with uvicorn workers (start.sh), on port 8000, as a non-root user.
#   docker build -t asgi_todo .
#   docker run -p 8000:8000 -e DATABASE_URL=postgresql://... -e SECRET_KEY=... asgi_todo
# The migrations ship in the package: `docker run ... asgi_todo asgi-todo db upgrade` as a job
# before the new image serves, or UPDATE_DB=1 (the gunicorn master upgrades, once, first).
# compose.yaml runs it with PostgreSQL.

# Build stage: a virtual environment with the pinned requirements, then the package itself.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Requirements first: this layer is rebuilt only when they change, not on every code change.
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY pyproject.toml setup.cfg README.md ./
COPY asgi_todo ./asgi_todo
RUN pip install --no-deps .

# Final stage: the slim base, the virtual environment and start.sh; no compilers, no tests.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    DATABASE_URL=sqlite:////app/data/asgi_todo.db
# A numeric user, so that a cluster can check runAsNonRoot. /app/data holds the default SQLite
# database (mount a volume there, or use PostgreSQL); /app itself stays read-only to the app.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir -p /app/data \
    && chown app:app /app/data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY start.sh ./
USER 10001:10001
EXPOSE 8000
# Python, not curl (the slim image has none); urlopen fails on a 503 as on a refused connection.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["./start.sh"]
