# syntax=docker/dockerfile:1
# CPU image running `beholder serve` (HTTP API + web page) on port 8000.
# Not built or run in CI (no Docker engine on the CI machines); linted with hadolint.
#   docker build -t beholder .
#   docker run --rm -p 8000:8000 beholder                      # idealo's NIMA, fastest CPU runtime
#   docker run --rm -p 8000:8000 -v "$PWD/runs:/models:ro" beholder --checkpoint /models/best.pt

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
# CPU-only torch wheels: the default ones bundle CUDA (gigabytes this image never uses).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch>=2.4" "torchvision>=0.19" \
    && /opt/venv/bin/pip install --no-cache-dir ".[serve,onnx,openvino]"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BEHOLDER_CACHE=/var/cache/beholder
RUN useradd --system --uid 10001 --create-home beholder \
    && mkdir -p /var/cache/beholder \
    && chown beholder /var/cache/beholder
COPY --from=build /opt/venv /opt/venv
USER 10001
# Bake the weights (downloaded and sha256-verified) and their ONNX export into the image, so the
# container starts offline and fast. To serve other weights, mount them and pass --checkpoint.
ARG MODEL=nima-mobilenet-idealo
RUN python -c "from beholder.inference import Scorer; Scorer.from_pretrained('${MODEL}', runtime='auto')"
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["beholder", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model", "nima-mobilenet-idealo", "--runtime", "auto"]
