# syntax=docker/dockerfile:1
#
# One image for every service: the web portal (default CMD), the portal-side Celery worker and
# the grading workers (cpu and gpu). docker-compose.yml picks the command per service; see
# docs/deployment.md.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# bubblewrap: the grading workers run every submission inside bwrap.
# iproute2 (and util-linux's nsenter): the private network of a distributed job's ranks.
# libgomp1: OpenMP runtime for torch / scikit-learn CPU kernels.
# gcc, libc6-dev: Triton compiles a small C launcher for each kernel at run time and fails
# with "Failed to find C compiler" without one.
# g++, ninja-build: C++/CUDA extension labs (cuda_matmul) build with torch's load_inline in the
# sandbox. (python3-dev's headers come with the python image.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap iproute2 libgomp1 gcc g++ ninja-build libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged runtime user; bwrap then creates the sandbox through an unprivileged user
# namespace (the container needs the security_opt exceptions from docker-compose.yml).
RUN groupadd --system --gid 1000 app \
    && useradd --system --uid 1000 --gid app --create-home --home-dir /home/app \
       --shell /usr/sbin/nologin app \
    && mkdir -p /srv/aisys/uploaded-labs /var/cache/aisys/compile \
    && chown app:app /srv/aisys/uploaded-labs /var/cache/aisys/compile

WORKDIR /app

# Dependencies first, so code changes do not reinstall torch. The project itself declares no
# packages (the code runs from /app via PYTHONPATH), so this layer only needs the metadata.
# TORCH_INDEX_URL lets CPU-only nodes build a much smaller image, e.g.
#   docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The default (PyPI) torch wheel bundles the CUDA runtime the GPU worker needs.
ARG TORCH_INDEX_URL=""
COPY pyproject.toml README.md* ./
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url $TORCH_INDEX_URL} . \
    && rm -rf build ./*.egg-info

# The app user owns /app so that collectstatic and Celery beat can write there at start-up.
COPY --chown=app:app . .

USER app
ENV HOME=/home/app

EXPOSE 8000

CMD ["sh", "-c", "python manage.py migrate --noinput && python manage.py collectstatic --noinput && python manage.py sync_labs && exec daphne -b 0.0.0.0 -p 8000 portal.asgi:application"]
