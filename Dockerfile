# batchrun as a container: `docker run IMAGE run JOB.yaml`, and the image for Cloud Run jobs.
# See docs/cloud-run.md for building it, its size, and running it as a job with many tasks.
#
# The base is pinned by digest (the multi-architecture index of python:3.11.14-slim-bookworm), so a
# rebuild starts from the same bytes; docs/cloud-run.md says where the digest comes from and how to
# refresh it. The dependencies are pinned, with hashes, by requirements.lock.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# Build stage: the venv, from wheels only (no compiler); binutils' strip drops debug symbols.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install --yes --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The locked dependencies first: this layer is rebuilt only when the lock file changes.
COPY requirements.lock pyproject.toml README.md ./
COPY docker ./docker
COPY batchrun ./batchrun
COPY jobs ./jobs
COPY sample_data ./sample_data
RUN sh docker/install-venv.sh /opt/batchrun /src

# Runtime stage: the slim base, the venv and the sample job; no compiler, no pip, no caches.
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/batchrun/bin:$PATH \
    HOME=/home/batchrun
COPY --from=build /opt/batchrun /opt/batchrun

WORKDIR /app
# The sample job, so `docker run IMAGE run jobs/reviews-sentiment.yaml` works against the simulator.
COPY jobs ./jobs
COPY sample_data ./sample_data

# Never run as root: a dedicated user with a writable HOME (libraries keep caches and gcloud
# credentials there) that owns only its home and the working directory (for relative output paths).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/batchrun --shell /usr/sbin/nologin batchrun \
 && chown batchrun:batchrun /app
USER 10001:10001

ENTRYPOINT ["batchrun"]
CMD ["--help"]
