#!/usr/bin/env bash
# The paper from scratch, in one command: every result, figure, table and number, then main.pdf.
#
#   bash experiments/recipes/paper.sh            # full: 14 min measured on 2 cores (budget 38 min), then make -C paper
#   bash experiments/recipes/paper.sh --quick    # every stage on tiny settings, no TeX (the test suite runs this)
#   PAPER_OUT=runs/paper_elsewhere bash experiments/recipes/paper.sh --quick   # results under $PAPER_OUT instead of the repo
#
# Resumable: a finished job (runs/paper/<job>/.paper_done) is skipped; a killed experiments.run job resumes.
# Stages and sizes: experiments/recipes/paper.py. Full mode installs latexmk/texlive from Debian if absent.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    *) echo "paper.sh: unknown option '$a'; allowed: --quick" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
t0=$(date +%s)
if [ "$QUICK" = 1 ]; then
  python -m experiments.recipes.paper --quick
  echo "[paper.sh] quick mode done in $(( $(date +%s) - t0 ))s (no TeX)"
  exit 0
fi
python -m experiments.recipes.paper
ROOT="${PAPER_OUT:-$REPO}"
echo "[paper.sh] tex: budget 120s"
if ! command -v latexmk >/dev/null; then
  echo "[paper.sh] latexmk not found: installing latexmk + texlive from Debian (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended
fi
if [ "$ROOT" != "$REPO" ]; then  # build beside the generated files: copy the hand-written sources there
  mkdir -p "$ROOT/paper"
  cp -r paper/main.tex paper/refs.bib paper/Makefile paper/sections "$ROOT/paper/"
fi
make -C "$ROOT/paper"
echo "[paper.sh] $ROOT/paper/main.pdf built; total $(( $(date +%s) - t0 ))s"
