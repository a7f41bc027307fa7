#!/usr/bin/env bash
# Writes the King James Bible (Debian package bible-kjv, installed by the caller) as plain text
# for the quickstart: one document per chapter, documents separated by one blank line, each
# document a "Book N" heading line followed by one verse per line (verse numbers removed).
# About 4.2 MB, 1189 documents. `bt prepare --format text` (the default blank-line split) reads it.
#
# usage: launch/quickstart-corpus.sh OUT.txt
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT.txt" >&2
  exit 2
fi
out=$1
if ! command -v bible >/dev/null 2>&1; then
  echo "$0: the 'bible' program is missing; install it with: sudo apt-get install bible-kjv" >&2
  exit 1
fi

tmp="${out}.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# -l with a very wide line keeps each verse on one line; stdin from /dev/null keeps bible from
# waiting for interactive input.
bible -l100000 'Genesis 1:1-Revelation 22:21' </dev/null |
  awk '
    /^[[:space:]]*$/ { next }                                  # blank separators
    /^[[:space:]]+[0-9]+[[:space:]]/ {                           # "  12 verse text"
      sub(/^[[:space:]]+[0-9]+[[:space:]]+/, ""); print; next
    }
    { if (n++ > 0) print ""; print }                            # "Genesis 1": a new chapter
  ' >"$tmp"

chapters=$(grep -c '^$' "$tmp" || true)
if [[ $((chapters + 1)) -ne 1189 ]]; then
  echo "$0: expected 1189 chapters from bible-kjv, got $((chapters + 1)); is bible-kjv complete?" >&2
  exit 1
fi
mv -f "$tmp" "$out"
trap - EXIT
echo "wrote $out ($(wc -c <"$out") bytes, 1189 chapters)" >&2
