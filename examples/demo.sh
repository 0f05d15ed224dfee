#!/usr/bin/env bash
# The whole pipeline on the built-in synthetic faces: prepare, train three models (the
# recommended pix2pix-warp, and pix2pix and cyclegan-attn as the papers run them), generate,
# evaluate each against the do-nothing baseline, compare, and draw a grid and a report.
#
#   bash examples/demo.sh [OUT]        (default OUT: demo)
#
# Sizes are chosen to finish in under 10 minutes on a 2-core CPU; raise the step counts
# (DEMO_WARP_STEPS, DEMO_PIX2PIX_STEPS, DEMO_CYCLEGAN_STEPS) for better models.
set -euo pipefail

OUT="${1:-demo}"
PAIRS="${DEMO_PAIRS:-300}"
SIZE="${DEMO_SIZE:-64}"
P2P_STEPS="${DEMO_PIX2PIX_STEPS:-500}"
CG_STEPS="${DEMO_CYCLEGAN_STEPS:-300}"
WARP_STEPS="${DEMO_WARP_STEPS:-600}"
MODELS="pix2pix-warp pix2pix cyclegan-attn"

# The demo folder is ours to replace, but only if an earlier demo made it.
if [ -e "$OUT" ]; then
    if [ -f "$OUT/.svai-demo" ]; then
        rm -rf "$OUT"
    else
        echo "error: $OUT exists and was not made by this demo; pass another folder: bash examples/demo.sh OTHER" >&2
        exit 2
    fi
fi
mkdir -p "$OUT"
touch "$OUT/.svai-demo"
DATA="$OUT/data"
START=$SECONDS

step() { printf '\n== %s (%ds)\n' "$1" "$((SECONDS - START))"; }

step "prepare $PAIRS synthetic pairs at ${SIZE}px"
svai prepare synthetic "$DATA" --count "$PAIRS" --size "$SIZE" --seed 0

step "train pix2pix-warp, the recommended model ($WARP_STEPS steps; its preset's settings)"
svai train --model pix2pix-warp --data "$DATA" --out "$OUT/runs/pix2pix-warp" --steps "$WARP_STEPS" \
    --image-size "$SIZE" --mixed-precision bf16 --set train.sample_every=100

step "train pix2pix ($P2P_STEPS steps)"
svai train --model pix2pix --data "$DATA" --out "$OUT/runs/pix2pix" --steps "$P2P_STEPS" \
    --batch-size 4 --image-size "$SIZE" --set model.ngf=32 --set model.ndf=32 --set train.sample_every=100

step "train cyclegan-attn ($CG_STEPS steps)"
svai train --model cyclegan-attn --data "$DATA" --out "$OUT/runs/cyclegan-attn" --steps "$CG_STEPS" \
    --batch-size 4 --image-size "$SIZE" --set model.ngf=16 --set model.ndf=32 --set train.sample_every=100

# pix2pix-warp composites by default (its preset sets generate.composite): pixels outside
# the procedures' region stay the input's.
for model in $MODELS; do
    step "generate and evaluate $model"
    svai generate --run "$OUT/runs/$model" --input "$DATA/test/before" --output "$OUT/predictions/$model"
    svai evaluate --pred "$OUT/predictions/$model" --target "$DATA/test/after" \
        --baseline "$DATA/test/before" --name "$model" --json "$OUT/runs/$model/evaluation.json"
done

step "compare"
RUNS=()
for model in $MODELS; do RUNS+=("$OUT/runs/$model"); done
svai compare "${RUNS[@]}" --grid "$OUT/grid.png" --report "$OUT/report.html"
svai compare "${RUNS[@]}" --format markdown > "$OUT/table.md"

step "done"
echo "table: $OUT/table.md   grid: $OUT/grid.png   report: $OUT/report.html"
