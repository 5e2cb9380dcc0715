#!/bin/sh
# Finds ferry's own executable on a host before the agent runs there.
# $1: the directory ferry keeps its executables in (may start with ~/), $2: the name
# of this build's. Prints what it found, one fact a line:
#   os <kernel> <machine>   what the host is (uname -s, uname -m)
#   bin <path>              where this build's executable goes (absolute)
#   have                    it is already there
#   path <version>          a ferry on the PATH, and its version
set -eu
dir=$1 name=$2
# A literal "~/" prefix (the caller quotes it): it stands for $HOME.
# shellcheck disable=SC2088
case $dir in "~/"*) dir="$HOME/${dir#"~/"}" ;; "~") dir=$HOME ;; esac
printf 'os %s %s\n' "$(uname -s)" "$(uname -m)"
printf 'bin %s/%s\n' "$dir" "$name"
if [ -x "$dir/$name" ]; then echo have; fi
if command -v ferry >/dev/null 2>&1; then
  printf 'path %s\n' "$(ferry --version 2>/dev/null | awk '{ print $2 }')"
fi
