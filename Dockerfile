# One image for every process: web, workers and beat differ only in their command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 VAR_DIR=/app/var STATIC_ROOT=/app/staticfiles
WORKDIR /app

# libosmesa6: software OpenGL for offscreen MuJoCo rendering of clips (MUJOCO_GL=osmesa).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libosmesa6 \
    && rm -rf /var/lib/apt/lists/*

COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt -r requirements.txt

COPY . .
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /app/var/media /app/var/beat && chown -R app /app/var
# (named volumes mounted on var/media and var/beat start with this ownership)
USER app

EXPOSE 8000
CMD ["sh", "bin/web"]
