# One image for the service and the workers: `tunefleet serve` and `tunefleet worker` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNEFLEET_CACHE_DIR=/var/cache/tunefleet \
    TUNEFLEET_ARTIFACT_DIR=/var/lib/tunefleet/artifacts

WORKDIR /app

# torch first, in its own layer: it is the bulk of the image (gigabytes) and changes far less often than our code.
# The default index serves the CUDA build on Linux x86_64, so the same image trains on GPUs; it bundles its
# CUDA runtime libraries and needs only the NVIDIA driver on the host (the NVIDIA container toolkit mounts it).
ARG TORCH_SPEC="torch>=2.3"
RUN pip install "${TORCH_SPEC}"

COPY pyproject.toml README.md requirements.lock ./
COPY studies ./studies
COPY service ./service
COPY worker ./worker
COPY tunefleet ./tunefleet
# The versions the suite passed with (torch excepted: TORCH_SPEC above chooses it).
RUN pip install --constraint requirements.lock .

# A non-root user; the feature cache and model store must be writable by it (a named volume mounted there
# inherits the owner on first use).
RUN useradd --create-home --uid 10001 tunefleet \
    && mkdir -p "${TUNEFLEET_CACHE_DIR}" "${TUNEFLEET_ARTIFACT_DIR}" \
    && chown tunefleet:tunefleet "${TUNEFLEET_CACHE_DIR}" "${TUNEFLEET_ARTIFACT_DIR}"
USER tunefleet

EXPOSE 8000
CMD ["tunefleet", "serve", "--host", "0.0.0.0", "--port", "8000"]
