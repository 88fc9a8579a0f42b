#!/usr/bin/env bash
# Fill data/<Category>/ with the rating-prediction split files (formats: data/README.md).
#
#   bash scripts/get_data.sh Movies                    # download from the authors' public repository
#   bash scripts/get_data.sh Movies --from /path/data  # copy from a local directory instead
#   SIREN_DATA_DIR=/path/data bash scripts/get_data.sh Movies
#   bash scripts/get_data.sh --raw Books               # build from the raw Amazon Reviews 2023 files
#
# --from DIR accepts either DIR/<Category>/ or a DIR that holds the files itself.
# --dest DIR changes the target (default: data/<Category> in this repository).
# Files are checked against scripts/checksums/<Category>.sha256 when that file exists; nothing is
# left in the target unless every file arrived and verified.
#
# --raw <Category> [--raw_dir DIR] [build flags]: for categories whose split files were never
# published (Books, Video_Games, ...). It looks for <Category>.jsonl.gz and meta_<Category>.jsonl.gz
# (or the uncompressed .jsonl) in DIR (default data/raw/ in this repository); when one is missing it
# names both, where to download them and where to put them, and stops. Otherwise it runs
# scripts/build_category.py, which writes data/<Category>/ (any other flag goes to it, e.g.
# --max_users 20000, --output_root DIR, --overwrite). PYTHON picks the interpreter (default:
# .venv/bin/python when there is one, else python3).
set -euo pipefail

usage() {
  echo "usage: bash scripts/get_data.sh <Category> [--from DIR] [--dest DIR]" >&2
  echo "       bash scripts/get_data.sh --raw <Category> [--raw_dir DIR] [build_category.py flags]" >&2
  exit 2
}

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_URL="${SIREN_DATA_URL:-https://raw.githubusercontent.com/TommyDzh/LLM4Rec/main/data}"
RAW_URL="${SIREN_RAW_URL:-https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw}"
REQUIRED=(train.jsonl.gz valid.jsonl.gz test.jsonl.gz history.jsonl.gz)
OPTIONAL=(user_feature.jsonl)

if [ "${1:-}" = "--raw" ]; then
  shift
  [ $# -ge 1 ] || usage
  CATEGORY="$1"; shift
  case "$CATEGORY" in -*|"") usage ;; esac
  RAW_DIR="$REPO_DIR/data/raw"
  BUILD_ARGS=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --raw_dir) [ $# -ge 2 ] || usage; RAW_DIR="$2"; shift 2 ;;
      *) BUILD_ARGS+=("$1"); shift ;;
    esac
  done
  find_raw() {  # the .jsonl.gz file, else the .jsonl one, else nothing
    local name="$1"
    if [ -f "$RAW_DIR/$name.jsonl.gz" ]; then echo "$RAW_DIR/$name.jsonl.gz"
    elif [ -f "$RAW_DIR/$name.jsonl" ]; then echo "$RAW_DIR/$name.jsonl"
    fi
  }
  REVIEWS="$(find_raw "$CATEGORY")"
  META="$(find_raw "meta_$CATEGORY")"
  if [ -z "$REVIEWS" ] || [ -z "$META" ]; then
    {
      echo "error: the raw Amazon Reviews 2023 files of $CATEGORY are not both in $RAW_DIR:"
      [ -n "$REVIEWS" ] && echo "  found    $REVIEWS" \
        || echo "  missing  $CATEGORY.jsonl.gz (the reviews): $RAW_URL/review_categories/$CATEGORY.jsonl.gz"
      [ -n "$META" ] && echo "  found    $META" \
        || echo "  missing  meta_$CATEGORY.jsonl.gz (the item metadata): $RAW_URL/meta_categories/meta_$CATEGORY.jsonl.gz"
      echo "download them into $RAW_DIR/ (or pass --raw_dir DIR), e.g."
      echo "  mkdir -p $RAW_DIR"
      [ -n "$REVIEWS" ] || echo "  curl -fL -o $RAW_DIR/$CATEGORY.jsonl.gz $RAW_URL/review_categories/$CATEGORY.jsonl.gz"
      [ -n "$META" ] || echo "  curl -fL -o $RAW_DIR/meta_$CATEGORY.jsonl.gz $RAW_URL/meta_categories/meta_$CATEGORY.jsonl.gz"
      echo "then run this command again; it builds data/$CATEGORY/ with scripts/build_category.py"
    } >&2
    exit 1
  fi
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    if [ -x "$REPO_DIR/.venv/bin/python" ]; then PY="$REPO_DIR/.venv/bin/python"; else PY=python3; fi
  fi
  # The builder's own flags come last, so a --output_root given here wins over the default.
  exec "$PY" "$REPO_DIR/scripts/build_category.py" --category "$CATEGORY" --reviews "$REVIEWS" --meta "$META" \
    --output_root "$REPO_DIR/data" ${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"}
fi

[ $# -ge 1 ] || usage
CATEGORY="$1"; shift
case "$CATEGORY" in -*|"") usage ;; esac
FROM="${SIREN_DATA_DIR:-}"
DEST="$REPO_DIR/data/$CATEGORY"
while [ $# -gt 0 ]; do
  case "$1" in
    --from) [ $# -ge 2 ] || usage; FROM="$2"; shift 2 ;;
    --dest) [ $# -ge 2 ] || usage; DEST="$2"; shift 2 ;;
    *) usage ;;
  esac
done

SUMS="$REPO_DIR/scripts/checksums/$CATEGORY.sha256"
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/siren-data.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

if [ -n "$FROM" ]; then
  SRC="$FROM/$CATEGORY"
  [ -f "$SRC/train.jsonl.gz" ] || SRC="$FROM"
  if [ ! -f "$SRC/train.jsonl.gz" ]; then
    echo "error: no $CATEGORY split files in $FROM (looked for $FROM/$CATEGORY/train.jsonl.gz and $FROM/train.jsonl.gz)" >&2
    exit 1
  fi
  for f in "${REQUIRED[@]}"; do
    [ -f "$SRC/$f" ] || { echo "error: $SRC/$f is missing" >&2; exit 1; }
    cp "$SRC/$f" "$STAGE/$f"
  done
  for f in "${OPTIONAL[@]}"; do [ -f "$SRC/$f" ] && cp "$SRC/$f" "$STAGE/$f"; done
  echo "copied $CATEGORY from $SRC"
else
  command -v curl >/dev/null || { echo "error: curl is needed to download (or pass --from DIR)" >&2; exit 1; }
  for f in "${REQUIRED[@]}"; do
    echo "downloading $BASE_URL/$CATEGORY/$f"
    curl -fsSL --retry 2 -o "$STAGE/$f" "$BASE_URL/$CATEGORY/$f" \
      || { echo "error: could not download $BASE_URL/$CATEGORY/$f (offline? use --from DIR)" >&2; exit 1; }
  done
  for f in "${OPTIONAL[@]}"; do curl -fsSL -o "$STAGE/$f" "$BASE_URL/$CATEGORY/$f" 2>/dev/null || rm -f "$STAGE/$f"; done
fi

if [ -f "$SUMS" ]; then
  # Verify only the files that arrived; a required file is always there by now.
  (cd "$STAGE" && grep -E "  ($(ls | paste -sd'|'))\$" "$SUMS" | sha256sum --check --quiet) \
    || { echo "error: checksum mismatch against $SUMS; nothing was written to $DEST" >&2; exit 1; }
  echo "verified against $SUMS"
else
  echo "note: no checksums for $CATEGORY in scripts/checksums/; files not verified"
fi

mkdir -p "$DEST"
for f in "$STAGE"/*; do mv -f "$f" "$DEST/"; done
[ -f "$SUMS" ] && cp "$SUMS" "$DEST/SHA256SUMS"
echo "wrote $(ls "$DEST" | wc -l) files to $DEST"
