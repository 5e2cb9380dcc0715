#!/bin/sh
# Builds the hello example app and assembles its release directory in
# _build/rel/ (bin/hello, bin/start, optional mode and VERSION files).
# Set HELLO_MODE at build time to bake a mode into the release, e.g.
#   HELLO_MODE=fail-health ferry deploy --version v3
# Prints nothing on stdout; cargo's progress goes to stderr.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

cargo build --release --manifest-path "$here/Cargo.toml" --target-dir "$here/target" >&2

rel="$here/_build/rel"
rm -rf "$rel"
mkdir -p "$rel/bin"
cp "$here/target/release/hello" "$rel/bin/hello"

cat > "$rel/bin/start" <<'START'
#!/bin/sh
exec "$(dirname "$0")/hello" "$@"
START
chmod +x "$rel/bin/hello" "$rel/bin/start"

if [ -n "${HELLO_MODE:-}" ]; then
    printf '%s\n' "$HELLO_MODE" > "$rel/mode"
fi
if [ -n "${RELEASE_VERSION:-}" ]; then
    printf '%s\n' "$RELEASE_VERSION" > "$rel/VERSION"
fi
