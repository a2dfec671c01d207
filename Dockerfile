# One image for every service; docker-compose.yml picks the process with `command`
# (the argument lists in tools/commands.py).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/app/var

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && mkdir -p /app/var \
    && chown app:app /app/var

USER app

EXPOSE 8001 8002 8003

CMD ["python", "-m", "services.booking"]
