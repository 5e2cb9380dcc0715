#!/bin/sh
# Writes stdin to a file on the host: beside it first, renamed into place once whole.
# $1: the path (may start with ~/), $2: the mode (e.g. 644), $3: its sha256 (empty:
# not checked). Nothing is left behind when it fails.
set -eu
p=$1 mode=$2 sha=$3
# A literal "~/" prefix (the caller quotes it): it stands for $HOME.
# shellcheck disable=SC2088
case $p in "~/"*) p="$HOME/${p#"~/"}" ;; esac
mkdir -p "$(dirname "$p")"
tmp="$p.part.$$"
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
chmod "$mode" "$tmp"
if [ -n "$sha" ]; then
  got=$(sha256sum "$tmp" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "the copy of $p arrived damaged (sha256 $got, expected $sha)" >&2
    exit 1
  fi
fi
mv "$tmp" "$p"
