#!/usr/bin/env bash
# AVA download -> prepare -> train -> evaluate -> ONNX export, then exit. Every step is resumable:
# download skips finished files, prepare is incremental, train resumes from checkpoints/last.pt, so a
# restarted container (the same RUN_NAME, which does not depend on the date) continues where it stopped.
#
# Environment (defaults in brackets):
#   AVA_TXT              AVA.txt label file [/data/AVA.txt]; required. The official test list is
#                        taken from aesthetics_image_lists/generic_test.jpgl beside it when present.
#   AVA_IMAGES           image directory [/data/images]
#   AVA_PREPARED         prepared directory (manifest, resized cache) [/data/prepared]
#   AVA_URL_TEMPLATE     image URL containing {id}, e.g. a mirror [empty: DPChallenge's pages, --page-mode]
#   MAX_FAILED_FRACTION  share of ids that may fail to download and the run still goes on [0.05]
#                        (AVA always has some images that are gone from DPChallenge)
#   RUNS_DIR             where run directories go [/runs]
#   RUN_NAME             run directory name [the recipe's name, e.g. nima_mobilenet]
#   TRAIN_CONFIG         recipe name or YAML path [nima_mobilenet]
#   TRAIN_OVERRIDES      space-separated KEY=VALUE config overrides []
#   SKIP_DOWNLOAD        1 when the images are already in AVA_IMAGES [0]
#   DOWNLOAD_ARGS        extra `beholder ava download` arguments, e.g. "--workers 16" []
#   PREPARE_ARGS         extra `beholder ava prepare` arguments []
#   EVALUATE_ARGS        extra `beholder evaluate` arguments []
#   EXPORT_ONNX          1 to write RUN/model.onnx from the best checkpoint [1]
set -euo pipefail

: "${AVA_TXT:=/data/AVA.txt}"
: "${AVA_IMAGES:=/data/images}"
: "${AVA_PREPARED:=/data/prepared}"
: "${AVA_URL_TEMPLATE:=}"
: "${MAX_FAILED_FRACTION:=0.05}"
: "${RUNS_DIR:=/runs}"
: "${TRAIN_CONFIG:=nima_mobilenet}"
recipe="$(basename "${TRAIN_CONFIG}")"
: "${RUN_NAME:=${recipe%.*}}"
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
    source_args=()
    if [[ -n "${AVA_URL_TEMPLATE}" ]]; then
        source_args=(--url-template "${AVA_URL_TEMPLATE}")
    elif [[ " ${DOWNLOAD_ARGS} " != *" --url-template"* && " ${DOWNLOAD_ARGS} " != *" --page-mode "* ]]; then
        source_args=(--page-mode)  # the original AVA source: one DPChallenge page per id
    fi
    # Failures up to MAX_FAILED_FRACTION exit 0; more, or a host that cannot be reached, stop here.
    # shellcheck disable=SC2086  # word splitting of the *_ARGS variables is intended
    beholder ava download --ava-txt "${AVA_TXT}" --out "${AVA_IMAGES}" --no-progress \
        --max-failed-fraction "${MAX_FAILED_FRACTION}" "${source_args[@]}" ${DOWNLOAD_ARGS}
fi

step "prepare ${AVA_PREPARED}"
# shellcheck disable=SC2086
beholder ava prepare --ava-txt "${AVA_TXT}" --images "${AVA_IMAGES}" --out "${AVA_PREPARED}" \
    --no-progress ${PREPARE_ARGS}

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
