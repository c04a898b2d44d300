#!/usr/bin/env bash
# AVA download -> prepare -> train -> evaluate -> ONNX export, then exit. Every step is resumable:
# download skips finished files, prepare is incremental, train resumes from checkpoints/last.pt.
#
# Environment (defaults in brackets):
#   AVA_TXT          AVA.txt label file [/data/AVA.txt]; required
#   AVA_IMAGES       image directory [/data/images]
#   AVA_PREPARED     prepared directory (manifest, resized cache) [/data/prepared]
#   RUNS_DIR         where run directories go [/runs]
#   RUN_NAME         run directory name [nima-<UTC date>]
#   TRAIN_CONFIG     recipe name or YAML path [nima_mobilenet]
#   TRAIN_OVERRIDES  space-separated KEY=VALUE config overrides []
#   SKIP_DOWNLOAD    1 when the images are already in AVA_IMAGES [0]
#   DOWNLOAD_ARGS    extra `beholder ava download` arguments, e.g. "--url-template URL --workers 16" []
#   PREPARE_ARGS     extra `beholder ava prepare` arguments []
#   EVALUATE_ARGS    extra `beholder evaluate` arguments []
#   EXPORT_ONNX      1 to write RUN/model.onnx from the best checkpoint [1]
set -euo pipefail

: "${AVA_TXT:=/data/AVA.txt}"
: "${AVA_IMAGES:=/data/images}"
: "${AVA_PREPARED:=/data/prepared}"
: "${RUNS_DIR:=/runs}"
: "${RUN_NAME:=nima-$(date -u +%Y%m%d)}"
: "${TRAIN_CONFIG:=nima_mobilenet}"
: "${TRAIN_OVERRIDES:=}"
: "${SKIP_DOWNLOAD:=0}"
: "${DOWNLOAD_ARGS:=}"
: "${PREPARE_ARGS:=}"
: "${EVALUATE_ARGS:=}"
: "${EXPORT_ONNX:=1}"
RUN_DIR="${RUNS_DIR}/${RUN_NAME}"

step() { printf '\n[%s] == %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [[ ! -f "${AVA_TXT}" ]]; then
    echo "train-pipeline: AVA_TXT=${AVA_TXT} not found; mount the AVA labels (AVA.txt) there" >&2
    exit 2
fi

if [[ "${SKIP_DOWNLOAD}" != "1" ]]; then
    step "download AVA images into ${AVA_IMAGES}"
    # shellcheck disable=SC2086  # word splitting of the *_ARGS variables is intended
    beholder ava download --ava-txt "${AVA_TXT}" --out "${AVA_IMAGES}" ${DOWNLOAD_ARGS}
fi

step "prepare ${AVA_PREPARED}"
# shellcheck disable=SC2086
beholder ava prepare --ava-txt "${AVA_TXT}" --images "${AVA_IMAGES}" --out "${AVA_PREPARED}" ${PREPARE_ARGS}

step "train into ${RUN_DIR} (config ${TRAIN_CONFIG})"
resume=()
if [[ -f "${RUN_DIR}/checkpoints/last.pt" ]]; then
    resume=(--resume)  # a restarted container continues the run instead of starting over
fi
# shellcheck disable=SC2086
beholder train --data "${AVA_PREPARED}" --out "${RUN_DIR}" --config "${TRAIN_CONFIG}" "${resume[@]}" ${TRAIN_OVERRIDES}

step "evaluate ${RUN_DIR}/checkpoints/best.pt on the official test split"
# shellcheck disable=SC2086
beholder evaluate --checkpoint "${RUN_DIR}/checkpoints/best.pt" --data "${AVA_PREPARED}" \
    --out "${RUN_DIR}/evaluation" --no-progress ${EVALUATE_ARGS}

if [[ "${EXPORT_ONNX}" == "1" ]]; then
    step "export ${RUN_DIR}/model.onnx"
    beholder export --checkpoint "${RUN_DIR}/checkpoints/best.pt" --format onnx --out "${RUN_DIR}/model.onnx"
fi

step "done: ${RUN_DIR}"
