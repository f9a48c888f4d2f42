# Image for the api, the flusher and one-shot commands (`migrate`, `sites add`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Metadata first so the dependency layer is rebuilt only when pyproject.toml changes
# (hatchling needs the README named in pyproject to build).
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install . \
    && useradd --system --no-create-home --shell /usr/sbin/nologin viewcounter

USER viewcounter

ENTRYPOINT ["viewcounter"]
CMD ["--help"]
