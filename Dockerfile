# Nominal: API and worker image. Two variants, one file:
#
#   docker build --target cpu  -t nominal:cpu  .    # CPU workers and the API
#   docker build --target cuda -t nominal:cuda .    # GPU workers (run with the NVIDIA container runtime)
#
# PyPI's torch wheels carry their CUDA libraries and also run on the CPU, so both
# variants start from the same slim Python. To build a smaller CPU image from a
# CPU-only torch wheel index, pass --build-arg TORCH_INDEX_URL=<that index>.

FROM python:3.11-slim AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nominal
ENV PATH=/opt/nominal/bin:$PATH
WORKDIR /src
# Dependencies first, so code changes do not reinstall torch.
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir indexing app workers deployment \
 && touch indexing/__init__.py app/__init__.py workers/__init__.py deployment/__init__.py \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install -c constraints.txt --index-url "$TORCH_INDEX_URL" torch torchvision; fi \
 && pip install -c constraints.txt . && pip uninstall -y nominal
COPY indexing ./indexing
COPY app ./app
COPY workers ./workers
COPY deployment ./deployment

FROM build AS build-cpu
RUN pip install --no-deps .

FROM build AS build-cuda
# faiss-gpu and faiss-cpu both install the `faiss` module: with both, whichever wrote last wins,
# and removing one later deletes files of the other. The CUDA image holds faiss-gpu only.
RUN pip install --no-deps . && pip uninstall -y faiss-cpu && pip install "faiss-gpu-cu12>=1.8" \
 && test "$(pip list 2>/dev/null | grep -ci '^faiss')" = 1

FROM python:3.11-slim AS runtime
# A non-root user owning only the data directory.
RUN useradd --create-home --uid 10001 nominal && mkdir /data && chown nominal /data
ENV PATH=/opt/nominal/bin:$PATH NOMINAL_DATA=/data PYTHONUNBUFFERED=1
WORKDIR /home/nominal
USER nominal
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
CMD ["nominal", "serve", "--host", "0.0.0.0"]

FROM runtime AS cuda
COPY --from=build-cuda /opt/nominal /opt/nominal

FROM runtime AS cpu
COPY --from=build-cpu /opt/nominal /opt/nominal
