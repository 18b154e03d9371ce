# bnsweep: one image for the API (default command), `bnsweep migrate` and `bnsweep worker`.
#
#   docker build -t bnsweep .                                     # CUDA 12.4 torch (GPU workers)
#   docker build -t bnsweep --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# No data is downloaded at run time: datasets that are not generated locally (MNIST-1D, digits)
# are read from the /data volume (BNSWEEP_DATA_DIR).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BNSWEEP_DATA_DIR=/data

RUN groupadd --system --gid 10001 bnsweep \
 && useradd --system --uid 10001 --gid bnsweep --home-dir /app --create-home \
        --shell /usr/sbin/nologin bnsweep \
 && mkdir -p /data \
 && chown bnsweep:bnsweep /data

WORKDIR /src

# 1. torch first, from the chosen index (CUDA by default). pyproject.toml accepts torch>=2.4,<3.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.4,<3"

# 2. The pinned dependencies, in their own layer (rebuilt only when these two files change).
#    constraints.txt pins the CPU torch of CI: drop that pin and the pins of torch's own
#    requirements (a CUDA build may need other versions of them, e.g. torch 2.6.0+cu124 requires
#    sympy==1.13.1), then pin torch to the build just installed so pip can never replace it.
COPY pyproject.toml constraints.txt ./
RUN set -eu; \
    torch_version="$(python -m pip show torch | sed -n 's/^Version: //p')"; \
    torch_deps="$(python -m pip show torch | sed -n 's/^Requires: //p' | sed 's/[-_.]/[-_.]/g; s/, */|/g')"; \
    grep -viE "^(torch|${torch_deps})==" constraints.txt > constraints.image.txt; \
    echo "torch==${torch_version}" >> constraints.image.txt
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.image.txt \
 && pip install -c constraints.image.txt -r requirements.image.txt

# 3. The project itself (not editable: /src is removed afterwards).
COPY . .
RUN pip install -c constraints.image.txt . \
 && python -c "import torch, service.app, search.worker, models.train, migrations" \
 && cd / && rm -rf /src

# The example specs, where `bnsweep submit examples/mnist1d.yaml` finds them: the working
# directory (root-owned, read-only for the service user).
WORKDIR /app
COPY examples/ examples/
USER bnsweep
VOLUME ["/data"]
EXPOSE 8000

# The API. Compose runs `bnsweep migrate` and `bnsweep worker ...` from the same image; its
# healthcheck (GET /healthz) is declared in docker-compose.yml, so worker containers built from
# this image are not reported unhealthy.
CMD ["uvicorn", "--factory", "service.app:create_app", "--host", "0.0.0.0", "--port", "8000"]
