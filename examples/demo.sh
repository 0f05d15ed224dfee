#!/usr/bin/env bash
# The whole pipeline on the built-in synthetic faces: prepare (with face landmarks), fit the
# recommended landmark-warp, train pix2pix and cyclegan-attn as their papers run them,
# generate, evaluate each against the do-nothing baseline, compare, and draw a grid and a
# report; then one procedure alone with the recommended model.
#
#   bash examples/demo.sh [OUT]        (default OUT: demo)
#
# Needs the face layer (svai[face] and its weights; `make` installs both). Sizes are chosen to
# finish in under 10 minutes on a 2-core CPU; raise the step counts (DEMO_PIX2PIX_STEPS,
# DEMO_CYCLEGAN_STEPS) for better learned models.
set -euo pipefail

OUT="${1:-demo}"
PAIRS="${DEMO_PAIRS:-300}"
SIZE="${DEMO_SIZE:-128}"
P2P_STEPS="${DEMO_PIX2PIX_STEPS:-200}"
CG_STEPS="${DEMO_CYCLEGAN_STEPS:-100}"
MODELS="landmark-warp pix2pix cyclegan-attn"

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

step "prepare $PAIRS synthetic pairs at ${SIZE}px, with face landmarks"
svai prepare synthetic "$DATA" --count "$PAIRS" --size "$SIZE" --seed 0 --landmarks

step "fit landmark-warp, the recommended model (a closed-form fit: seconds)"
svai train --model landmark-warp --data "$DATA" --out "$OUT/runs/landmark-warp" --image-size "$SIZE"

step "train pix2pix ($P2P_STEPS steps)"
svai train --model pix2pix --data "$DATA" --out "$OUT/runs/pix2pix" --steps "$P2P_STEPS" \
    --batch-size 4 --image-size "$SIZE" --mixed-precision bf16 --set model.ngf=32 --set model.ndf=32 \
    --set train.sample_every=100

step "train cyclegan-attn ($CG_STEPS steps)"
svai train --model cyclegan-attn --data "$DATA" --out "$OUT/runs/cyclegan-attn" --steps "$CG_STEPS" \
    --batch-size 4 --image-size "$SIZE" --mixed-precision bf16 --set model.ngf=16 --set model.ndf=32 \
    --set train.sample_every=50

# landmark-warp takes each test photo's procedures from the manifest and its landmarks from
# the dataset, and changes nothing outside the regions of those procedures.
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

step "the nose alone, at full and half intensity, with the recommended model"
svai generate --run "$OUT/runs/landmark-warp" --input "$DATA/test/before" --output "$OUT/nose" --procedures nose
svai generate --run "$OUT/runs/landmark-warp" --input "$DATA/test/before" --output "$OUT/nose-half" \
    --procedures nose --intensity 0.5

step "done"
echo "table: $OUT/table.md   grid: $OUT/grid.png   report: $OUT/report.html   nose only: $OUT/nose"
echo "consultation app: svai serve --run $OUT/runs/landmark-warp"
