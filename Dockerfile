# batchrun as a container: `docker run IMAGE run JOB.yaml`, and the image for Cloud Run jobs.
# See docs/cloud-run.md for building it and running it as a job with many tasks.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies, read from pyproject.toml alone (with the gcs extra for gs:// paths): this layer is
# rebuilt only when pyproject.toml changes, not when the code does.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['gcs']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The code, then the package itself without touching the dependency layer.
COPY README.md ./
COPY batchrun ./batchrun
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# The sample job, so `docker run IMAGE run jobs/reviews-sentiment.yaml` works against the simulator.
COPY jobs ./jobs
COPY sample_data ./sample_data

# Never run as root: a dedicated user that owns only the working directory (for relative output paths).
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin batchrun \
 && chown batchrun:batchrun /app
USER 10001:10001

ENTRYPOINT ["batchrun"]
CMD ["--help"]
