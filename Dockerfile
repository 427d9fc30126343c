FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# ffmpeg/ffprobe for the files queue's video operations (Debian's package, LGPL/GPL binaries run
# as separate programs, not linked)
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md requirements.lock ./
COPY core ./core
COPY gateway ./gateway
COPY handlers ./handlers
COPY tasks ./tasks
# the exact set CI tested (requirements.lock), so an image built next month runs the same code
RUN pip install --no-cache-dir -c requirements.lock . && useradd --create-home gateway && mkdir -p /data && chown gateway /data
USER gateway
ENV DATA_DIR=/data
EXPOSE 8000
CMD ["gateway", "api", "--host", "0.0.0.0", "--port", "8000"]
