# syntax=docker/dockerfile:1
# GPU training image: download AVA, prepare it, train NIMA, evaluate, export, then stop.
# Not built or run in CI (no Docker engine, no GPU there); linted with hadolint.
#   docker build -f docker/train-gpu.Dockerfile -t beholder-train .
#   docker run --rm --gpus all -v /big/disk/ava:/data -v "$PWD/runs:/runs" \
#       -e TRAIN_OVERRIDES="phase2.epochs=10" beholder-train
# Settings are environment variables; see docker/train-pipeline.sh and docs/deploy.md.

FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ENV PYTHONUNBUFFERED=1 \
    BEHOLDER_CACHE=/cache \
    AVA_TXT=/data/AVA.txt \
    AVA_IMAGES=/data/images \
    AVA_PREPARED=/data/prepared \
    RUNS_DIR=/runs
WORKDIR /src
COPY . .
# torch comes with the base image (CUDA build); the extras add data handling and ONNX export.
# Installed from this source tree, whose pyproject declares the dependency versions.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[data,onnx]" \
    && install -m 0755 docker/train-pipeline.sh /usr/local/bin/train-pipeline \
    && useradd --uid 10001 --create-home beholder \
    && mkdir -p /data /runs /cache \
    && chown beholder /data /runs /cache
USER 10001
WORKDIR /runs
VOLUME ["/data", "/runs", "/cache"]
ENTRYPOINT ["train-pipeline"]
