//! The on-host scripts. Each is constant text run as `sh -c SCRIPT ferry APP_DIR ARG...`:
//! user values arrive only as positional parameters, never pasted into the text.
//! They need a POSIX shell, coreutils, `tar` and `gzip`, which is what the README
//! asks of a host.

/// Shared head of every script: strict mode, resolve `~/` in the app dir, and a
/// liveness test that treats zombies as dead (a host's init may not reap them).
const PRELUDE: &str = r#"set -eu
app=$1; shift
case $app in "~/"*) app="$HOME/${app#"~/"}";; "~") app=$HOME;; esac
# Builtins only (no process per call): they run in tight loops.
alive() {
  [ -n "$1" ] && [ "$1" != 0 ] || return 1
  read -r _stat 2>/dev/null < "/proc/$1/stat" || return 1
  case ${_stat##*) } in Z* | X* | "") return 1 ;; esac
}
pid_of() {
  [ -f "$1" ] && read -r _json < "$1" || return 0
  case $_json in *'"pid":'[0-9]*) _pid=${_json##*\"pid\":}; printf '%s\n' "${_pid%%[!0-9]*}" ;; esac
}
# Whether any live (non-zombie) process is still in process group $1: an instance is
# stopped only when all of it is, not just the process ferry started.
group_alive() {
  [ -n "$1" ] && [ "$1" != 0 ] || return 1
  # No process at all in the group (zombies included): no need to look closer.
  kill -s 0 -- "-$1" 2>/dev/null || return 1
  # After the command name (which may hold spaces and parentheses) come the state,
  # the parent pid and the process group.
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$1" '
    { sub(/^.*\) /, ""); if ($3 == g && $1 != "Z" && $1 != "X") found = 1 }
    END { exit !found }'
}
# `hold NAME` takes a short mutex (a directory) under the app dir, released on exit;
# one left by a killed ferry is broken after 30 s.
hold() {
  n=0
  until mkdir "$app/$1" 2>/dev/null; do
    t=$(stat -c %Y "$app/$1" 2>/dev/null || echo 0)
    if [ $(( $(date +%s) - t )) -gt 30 ]; then rm -rf "$app/$1"; continue; fi
    n=$((n + 1)); [ "$n" -lt 400 ] || { echo "timed out waiting for $1" >&2; exit 1; }
    sleep 0.05
  done
  held="$app/$1"
  trap 'rm -rf "$held"' EXIT
}
# Run as `sh -c "$LOAD_ENV; ..." sh ENV_FILE COMMAND SECRETS_FILE`: sources the env file,
# in which a `ferry_secrets` line loads the secrets (one `KEY=base64` per line).
LOAD_ENV='ferry_secrets() {
  [ -f "$3" ] || return 0
  while IFS= read -r line; do k=${line%%=*}; v=${line#*=}; [ -n "$k" ] && export "$k=$(printf %s "$v" | base64 -d)"; done < "$3"
}
. "$1"'
# `verify DIR SUMS`: the files under DIR match SUMS (sha256sum lines). openssl hashes
# several times faster than coreutils where the CPU helps; on any difference (or
# without openssl) `sha256sum -c` decides and names the file.
verify() {
  if command -v openssl >/dev/null 2>&1 &&
    (cd "$1" && sed 's/^[0-9a-f]*  //' "$2" | tr '\n' '\0' | xargs -0 -r openssl dgst -sha256 -r --) 2>/dev/null |
    sed 's/ \*/  /' | cmp -s - "$2"; then
    return 0
  fi
  (cd "$1" && sha256sum -c --quiet --strict - < "$2" >&2)
}
"#;

pub fn full(body: &str) -> String {
    format!("{PRELUDE}{body}")
}

/// `observe`: prints one line per fact: `R <release json>`, `I <alive> <instance
/// json>`, `L <age seconds> <holder json>`, `C <current version>`, `V <volume json>`,
/// `S <sha256 of the secrets file>`. One awk reads every file (a process per fact
/// would make this the slowest round trip of a deploy); with `own_lock` set, the lock
/// this very script just took is not reported. Listening ports are not read here
/// (see LISTENING): the kernel takes milliseconds to list every socket of a busy host.
macro_rules! observe_fn {
    () => {
        r#"
observe() {
# Operands starting with `/` or `./` are never taken for awk's `kind=value` assignments.
case $app in /*) d=$app ;; *) d=./$app ;; esac
set -- kind=R
for f in "$d"/releases/*/.ferry-release; do [ ! -f "$f" ] || set -- "$@" "$f"; done
set -- "$@" kind=I
for f in "$d"/instances/*/instance.json; do [ ! -f "$f" ] || set -- "$@" "$f"; done
set -- "$@" kind=V
for f in "$d"/volumes/*/volume.json; do [ ! -f "$f" ] || set -- "$@" "$f"; done
awk '
  kind == "I" {
    # Whether its pid is a live, non-zombie process.
    alive = 0
    if (match($0, /"pid":[0-9]+/)) {
      f = "/proc/" substr($0, RSTART + 6, RLENGTH - 6) "/stat"
      if ((getline st < f) > 0) { sub(/^.*\) /, "", st); alive = (st !~ /^[ZX]/) }
      close(f)
    }
    print "I " alive " " $0; next
  }
  { print kind " " $0 }' "$@" < /dev/null || return 1
[ -d "$app" ] || return 0
if [ -z "${own_lock:-}" ] && [ -d "$app/lock" ]; then
  f="$app/lock/holder.json"; [ -f "$f" ] || f="$app/lock"
  if t=$(stat -c %Y "$f" 2>/dev/null); then
    printf 'L %s %s\n' "$(( $(date +%s) - t ))" "$(cat "$app/lock/holder.json" 2>/dev/null || echo '{}')"
  fi
fi
if [ -L "$app/current" ]; then
  # The release `current` points at names itself: no process to read the link.
  if read -r c 2>/dev/null < "$app/current/.ferry-release"; then
    c=${c#*\"version\":\"}; printf 'C %s\n' "${c%%\"*}"
  else
    c=$(readlink "$app/current"); printf 'C %s\n' "${c##*/}"
  fi
fi
if [ -f "$app/secrets.env" ]; then printf 'S %s\n' "$(sha256sum < "$app/secrets.env" | cut -c1-64)"; fi
true
}
"#
    };
}

pub const OBSERVE: &str = concat!(observe_fn!(), "observe\n");

/// Prints `P <listening tcp ports>`: what a new instance's port must avoid.
pub const LISTENING: &str = r#"
printf 'P'; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '
  function hex(s,  i, n) { n = 0; for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789ABCDEF", toupper(substr(s, i, 1))) - 1; return n }
  $4 == "0A" { split($2, a, ":"); printf " %d", hex(a[2]) }' 2>/dev/null || true; echo
"#;

/// `$1` sha256: exits 0 when the artifact is already there.
pub const HAS_ARTIFACT: &str = r#"
mkdir -p "$app/artifacts" "$app/releases" "$app/instances"
[ -f "$app/artifacts/$1.tar.gz" ]
"#;

/// `$1` sha256, `$2` version, `$3` installed-at (ms); stdin: `sha256sum -c` lines.
/// Unpacks beside the final place, verifies every file, then renames into place, so
/// `releases/<version>` is either complete and verified or absent.
pub const INSTALL_RELEASE: &str = r#"
sha=$1 version=$2 at=$3
rel="$app/releases/$version"
if [ -f "$rel/.ferry-release" ]; then
  if grep -qF "\"sha256\":\"$sha\"" "$rel/.ferry-release"; then echo present; exit 0; fi
  echo "release $version is already installed with different contents" >&2; exit 5
fi
tmp="$app/releases/.tmp-$version-$$"
rm -rf "$tmp" "$rel"; mkdir -p "$tmp"
if ! tar -xzf "$app/artifacts/$sha.tar.gz" -C "$tmp" --no-same-owner 2>"$tmp.err"; then
  cat "$tmp.err" >&2; rm -rf "$tmp" "$tmp.err"; exit 6
fi
rm -f "$tmp.err"
cat > "$tmp.sums"
if ! verify "$tmp" "$tmp.sums"; then
  rm -rf "$tmp" "$tmp.sums"; echo "release $version does not match its manifest" >&2; exit 7
fi
rm -f "$tmp.sums"
printf '{"version":"%s","sha256":"%s","installed_at":%s}\n' "$version" "$sha" "$at" > "$tmp/.ferry-release"
mv "$tmp" "$rel"
echo installed
"#;

/// `$1` sha256, `$2` version, `$3` now (ms), `$4` artifact size, `$5` `gz` or `tar`;
/// stdin: a line with the length of the sums, the sums (sha256sum lines), then the
/// artifact itself (`gz`) or its plain tar stream (`tar`: a release of already
/// compressed files, which the host need not decompress). Unpacks it as it arrives
/// (one pass: transfer and unpack overlap), keeps a copy of an artifact under
/// `artifacts/` for later installs, verifies every file, and only then moves the
/// release into place. Prints `installed`, or `present` (without reading the rest of
/// its input) when this release is already there.
pub const INSTALL_STREAM: &str = r#"
sha=$1 version=$2 at=$3 size=$4 format=$5
rel="$app/releases/$version"
if [ -f "$rel/.ferry-release" ]; then
  if grep -qF "\"sha256\":\"$sha\"" "$rel/.ferry-release"; then echo present; exit 0; fi
  echo "release $version is already installed with different contents" >&2; exit 5
fi
mkdir -p "$app/artifacts" "$app/releases"
tmp="$app/releases/.tmp-$version-$$" part="$app/artifacts/.part-$sha-$$"
trap 'rm -rf "$tmp" "$tmp.sums" "$tmp.err" "$part"' EXIT
# An upload cut off (ferry stopped it, or the connection went) still cleans up.
trap 'exit 1' HUP INT TERM PIPE
rm -rf "$rel"; mkdir "$tmp"
IFS= read -r n
head -c "$n" > "$tmp.sums"
if [ "$format" = tar ]; then
  tar -xf - -C "$tmp" --no-same-owner 2>"$tmp.err" || { cat "$tmp.err" >&2; exit 6; }
  got=$size
elif tee "$part" | tar -xzf - -C "$tmp" --no-same-owner 2>"$tmp.err"; then
  got=$(stat -c %s "$part" 2>/dev/null || echo 0)
else
  cat "$tmp.err" >&2; exit 6
fi
if [ "$got" != "$size" ]; then
  echo "the artifact arrived incomplete ($got of $size bytes; is the disk full? \`df -h\`)" >&2; exit 6
fi
if ! verify "$tmp" "$tmp.sums"; then echo "release $version does not match its manifest" >&2; exit 7; fi
printf '{"version":"%s","sha256":"%s","installed_at":%s}\n' "$version" "$sha" "$at" > "$tmp/.ferry-release"
[ "$format" = tar ] || mv "$part" "$app/artifacts/$sha.tar.gz"
mv "$tmp" "$rel"
echo installed
"#;

/// `$1` another app dir on this machine holding the release, `$2` sha256, `$3`
/// version, `$4` now (ms). On the local target every region is a directory of one
/// machine: the release verified in one of them is given to the others as hard links
/// (releases are never modified), instead of unpacking it once per region.
pub const INSTALL_LINKED: &str = r#"
src=$1 sha=$2 version=$3 at=$4
rel="$app/releases/$version"
if [ -f "$rel/.ferry-release" ]; then
  if grep -qF "\"sha256\":\"$sha\"" "$rel/.ferry-release"; then echo present; exit 0; fi
  echo "release $version is already installed with different contents" >&2; exit 5
fi
if ! grep -qF "\"sha256\":\"$sha\"" "$src/releases/$version/.ferry-release" 2>/dev/null; then
  echo "$src holds no verified release $version with this sha256" >&2; exit 8
fi
mkdir -p "$app/artifacts" "$app/releases"
tmp="$app/releases/.tmp-$version-$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp" "$rel"
cp -al "$src/releases/$version" "$tmp"
rm -f "$tmp/.ferry-release"
printf '{"version":"%s","sha256":"%s","installed_at":%s}\n' "$version" "$sha" "$at" > "$tmp/.ferry-release"
ln -f "$src/artifacts/$sha.tar.gz" "$app/artifacts/$sha.tar.gz" 2>/dev/null || true
mv "$tmp" "$rel"
echo installed
"#;

/// `$1` id, `$2` version, `$3` the line that execs the start command (see
/// `start_line` in `host`), `$4` instance json without its closing brace, `$5` the time
/// for the log line; stdin: the env file. Starts the instance in its own session (so it outlives
/// ferry and can be signalled as a group) with a clean environment, and prints its pid.
macro_rules! start_fn {
    () => {
        r#"
start_instance() {
id=$1 version=$2 start=$3 json=$4 now=$5
inst="$app/instances/$id" rel="$app/releases/$version"
if [ ! -f "$rel/.ferry-release" ]; then echo "release $version is not installed" >&2; exit 4; fi
[ -d "$inst" ] || mkdir -p "$inst"
# Builtins only: the env file is a few lines, and a process per start adds up.
(umask 077; while IFS= read -r line; do printf '%s\n' "$line"; done > "$inst/env")
printf '== %s starting %s\n' "$now" "$version" >> "$inst/log"
cd "$rel"
env -i PATH="$PATH" HOME="$HOME" USER="${USER:-}" LANG="${LANG:-C.UTF-8}" \
  setsid sh -c "$LOAD_ENV"'; eval "$2"' sh "$inst/env" "$start" "$app/secrets.env" >> "$inst/log" 2>&1 < /dev/null &
pid=$!
printf '%s,"pid":%s}\n' "$json" "$pid" > "$inst/instance.json.tmp"
mv "$inst/instance.json.tmp" "$inst/instance.json"
echo "$pid"
}
"#
    };
}

pub const START: &str = concat!(start_fn!(), "start_instance \"$@\"\n");

/// `$1` id, `$2` signal name, `$3` timeout seconds. Signals the instance's process
/// group, waits, then SIGKILLs. Prints `killed` when it had to.
macro_rules! stop_fn {
    () => {
        r#"
stop_instance() {
id=$1 sig=$2 timeout=$3
inst="$app/instances/$id"
[ -f "$inst/instance.json" ] || return 0
pid=$(pid_of "$inst/instance.json")
if alive "$pid" || group_alive "$pid"; then
  kill -s "$sig" -- "-$pid" 2>/dev/null || kill -s "$sig" "$pid" 2>/dev/null || true
  # Most processes exit within a millisecond or two of the signal: look without
  # pausing at first (no `sleep` process per look), then every 10 ms; the cheap
  # leader first, the whole group (a scan of /proc) only after it.
  n=0; limit=$((timeout * 100)); spin=0
  while alive "$pid" && [ "$spin" -lt 1000 ]; do spin=$((spin + 1)); done
  while alive "$pid" && [ "$n" -lt "$limit" ]; do sleep 0.01; n=$((n + 1)); done
  while group_alive "$pid" && [ "$n" -lt "$limit" ]; do sleep 0.01; n=$((n + 1)); done
  if [ "$n" -ge "$limit" ] && group_alive "$pid"; then
    kill -s KILL -- "-$pid" 2>/dev/null || kill -s KILL "$pid" 2>/dev/null || true
    echo killed
    n=0; while group_alive "$pid" && [ "$n" -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
  fi
fi
read -r json < "$inst/instance.json"
printf '%s"pid":0}\n' "${json%\"pid\":*}" > "$inst/instance.json.tmp"
mv "$inst/instance.json.tmp" "$inst/instance.json"
}
"#
    };
}

pub const STOP: &str = concat!(stop_fn!(), "stop_instance \"$@\"\n");

/// `$1` id, `$2` signal name, `$3` timeout seconds, then START's arguments; stdin:
/// the env file. STOP then START in one round trip: replacing an instance whose
/// volumes need no re-attaching.
pub const SWITCH: &str = concat!(
    stop_fn!(),
    start_fn!(),
    r#"
# The old version keeps running when the new one is not there to start.
if [ ! -f "$app/releases/$5/.ferry-release" ]; then echo "release $5 is not installed" >&2; exit 4; fi
stop_instance "$1" "$2" "$3"
shift 3
start_instance "$@"
"#
);

/// `$1` id: removes a stopped instance's directory and frees its volumes (their data
/// stays for the next instance).
pub const REMOVE_INSTANCE: &str = r#"
rm -rf "$app/instances/$1"
for f in "$app"/volumes/*/volume.json; do
  [ -f "$f" ] || continue
  if grep -qF "\"attached\":\"$1\"" "$f"; then
    sed 's/"attached":"[^"]*"}$/"attached":null}/' "$f" > "$f.tmp" && mv "$f.tmp" "$f"
  fi
done
true
"#;

/// `$1` pid, `$2` limit in 50 ms ticks: returns with `exited` once the process is gone.
/// Writes a heartbeat every half second, so it ends (on SIGPIPE) as soon as ferry
/// stops listening instead of lingering on the host until the limit.
pub const WATCH_EXIT: &str = r#"
n=0
while alive "$1"; do
  sleep 0.05; n=$((n + 1))
  [ "$n" -lt "$2" ] || exit 0
  if [ $((n % 10)) -eq 0 ]; then echo . || exit 0; fi
done
echo exited
"#;

/// `$1` id, `$2` lines.
pub const LOG_TAIL: &str = r#"
f="$app/instances/$1/log"
[ -f "$f" ] && tail -n "$2" "$f" || true
"#;

/// `$1` one JSON line.
pub const APPEND_HISTORY: &str = r#"
mkdir -p "$app"
printf '%s\n' "$1" >> "$app/history.jsonl"
"#;

pub const READ_HISTORY: &str = r#"
[ -f "$app/history.jsonl" ] && cat "$app/history.jsonl" || true
"#;

/// `remove_release VERSION`: removes an unpacked release and its artifact.
macro_rules! remove_release_fn {
    () => {
        r#"
remove_release() {
rel="$app/releases/$1"
sha=$(sed -n 's/.*"sha256":"\([0-9a-f]*\)".*/\1/p' "$rel/.ferry-release" 2>/dev/null || true)
# Moved out of sight first, so a removal cut short never leaves a half release that
# still claims to be installed.
gone="$app/releases/.gone-$1-$$"
if mv "$rel" "$gone" 2>/dev/null; then rm -rf "$gone" || return 1; fi
if [ -n "$sha" ]; then rm -f "$app/artifacts/$sha.tar.gz" || return 1; fi
}
"#
    };
}

/// `$1` the lock's token (empty: leave the lock), `$2` the version to mark current
/// (empty: none), `$3` a history line (empty: none), then releases to prune. The steps
/// after a rollout in one round trip, the lock released last; prints `current`,
/// `history`, `pruned VERSION` for each step that succeeded (a failed one is reported
/// by its absence, and the others still run).
pub const FINISH: &str = concat!(
    remove_release_fn!(),
    r#"
token=$1 version=$2 line=$3; shift 3
if [ -n "$version" ] && ln -sfn "releases/$version" "$app/current.tmp" && mv -T "$app/current.tmp" "$app/current"; then
  echo current
fi
if [ -n "$line" ] && printf '%s\n' "$line" >> "$app/history.jsonl"; then echo history; fi
for v in "$@"; do
  if (remove_release "$v"); then echo "pruned $v"; fi
done
f="$app/lock/holder.json"
if [ -n "$token" ] && [ -f "$f" ] && grep -qF "\"token\":\"$token\"" "$f"; then rm -rf "$app/lock"; fi
true
"#
);

/// `$1` holder json. Prints `acquired` and then what OBSERVE prints (the state ferry
/// plans from, read under the lock in the same round trip), or `held <age> <holder
/// json>`.
pub const LOCK_ACQUIRE: &str = concat!(
    observe_fn!(),
    r#"
mkdir -p "$app"
# The lock is built aside with its holder, then renamed into place: it never exists
# without a holder, and the rename fails if a lock is already there.
tmp="$app/lock.new.$$"
rm -rf "$tmp"; mkdir "$tmp"
if ! printf '%s\n' "$1" > "$tmp/holder.json"; then rm -rf "$tmp"; exit 1; fi
if mv -T "$tmp" "$app/lock" 2>/dev/null; then
  echo acquired
  # A lock taken by a script that then fails is given back, not left behind.
  own_lock=1 observe || { rm -rf "$app/lock"; echo "could not read the app's state after taking the lock" >&2; exit 1; }
  exit 0
fi
rm -rf "$tmp"
f="$app/lock/holder.json"; [ -f "$f" ] || f="$app/lock"
t=$(stat -c %Y "$f" 2>/dev/null) || { echo 'held 0 {}'; exit 0; }
printf 'held %s %s\n' "$(( $(date +%s) - t ))" "$(cat "$app/lock/holder.json" 2>/dev/null || echo '{}')"
"#
);

/// `$1` the stale holder's token (may be empty), `$2` new holder json. Replaces the
/// lock only if it is still the one judged stale; prints `acquired` and what OBSERVE
/// prints, or `lost`.
pub const LOCK_TAKEOVER: &str = concat!(
    observe_fn!(),
    r#"
# Only one takeover at a time: the check of the stale holder and the replacement
# happen under one mutex, so two waiters cannot both replace the same stale lock.
hold lock.takeover
f="$app/lock/holder.json"
if [ ! -f "$f" ] || [ -z "$1" ] || grep -qF "\"token\":\"$1\"" "$f"; then
  rm -rf "$app/lock.stale.$$"; mv "$app/lock" "$app/lock.stale.$$" 2>/dev/null || true
  rm -rf "$app/lock.stale.$$"
fi
tmp="$app/lock.new.$$"
rm -rf "$tmp"; mkdir "$tmp"
if ! printf '%s\n' "$2" > "$tmp/holder.json"; then rm -rf "$tmp"; exit 1; fi
if mv -T "$tmp" "$app/lock" 2>/dev/null; then
  echo acquired
  own_lock=1 observe || { rm -rf "$app/lock"; echo "could not read the app's state after taking the lock" >&2; exit 1; }
else
  rm -rf "$tmp"; echo lost
fi
"#
);

/// `$1` token: refreshes the lease; prints `lost` when the lock is no longer ours.
pub const LOCK_REFRESH: &str = r#"
f="$app/lock/holder.json"
if [ -f "$f" ] && grep -qF "\"token\":\"$1\"" "$f"; then touch "$f"; else echo lost; fi
"#;

/// `$1` token, or empty to remove whatever lock is there.
pub const LOCK_RELEASE: &str = r#"
f="$app/lock/holder.json"
if [ -z "$1" ] || { [ -f "$f" ] && grep -qF "\"token\":\"$1\"" "$f"; }; then rm -rf "$app/lock"; fi
"#;

/// Stops nothing: the caller stops instances first, then this removes the app dir.
pub const DESTROY: &str = r#"
rm -rf "$app"
"#;

/// `$1` version, `$2` command, `$3` time limit in seconds (0: none); stdin: the env
/// file. Runs the release_command once from the release directory with a scratch
/// TMPDIR that is removed afterwards, keeping its output in `release_command.log`.
pub const RELEASE_COMMAND: &str = r#"
version=$1 cmd=$2 limit=$3
rel="$app/releases/$version"
if [ ! -f "$rel/.ferry-release" ]; then echo "release $version is not installed" >&2; exit 4; fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/ferry-release-command.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
(umask 077; cat > "$scratch/.env")
printf '== %s release_command for %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$version" >> "$app/release_command.log"
cd "$rel"
run() {
  if [ "$limit" -gt 0 ]; then
    env -i PATH="$PATH" HOME="$HOME" USER="${USER:-}" LANG="${LANG:-C.UTF-8}" TMPDIR="$scratch" \
      timeout -k 5 "$limit" sh -c "$LOAD_ENV"'; exec sh -c "$2"' sh "$scratch/.env" "$cmd" "$app/secrets.env"
  else
    env -i PATH="$PATH" HOME="$HOME" USER="${USER:-}" LANG="${LANG:-C.UTF-8}" TMPDIR="$scratch" \
      sh -c "$LOAD_ENV"'; exec sh -c "$2"' sh "$scratch/.env" "$cmd" "$app/secrets.env"
  fi
}
{ set +e; run < /dev/null; echo $? > "$scratch/.rc"; } 2>&1 | tee -a "$app/release_command.log"
exit "$(cat "$scratch/.rc")"
"#;

/// `$@` keys to replace; stdin: `KEY=base64` lines to add. The file is 0600 and its
/// values never appear on a command line.
pub const SECRETS_SET: &str = r#"
mkdir -p "$app"
umask 077
f="$app/secrets.env"; tmp="$f.tmp.$$"
touch "$f"; cp "$f" "$tmp"
for k in "$@"; do grep -v "^$k=" "$tmp" > "$tmp.2" || true; mv "$tmp.2" "$tmp"; done
cat >> "$tmp"
chmod 600 "$tmp"; mv "$tmp" "$f"
"#;

/// Prints `KEY sha256-prefix` for each secret.
pub const SECRETS_LIST: &str = r#"
f="$app/secrets.env"
[ -f "$f" ] || exit 0
while IFS= read -r line; do
  k=${line%%=*}; v=${line#*=}
  [ -n "$k" ] && printf '%s %s\n' "$k" "$(printf %s "$v" | base64 -d | sha256sum | cut -c1-12)"
done < "$f"
"#;

/// `$1` key: prints that secret's stored (base64) value, for ferry to read a database
/// URL; nothing if absent.
pub const SECRET_GET: &str = r#"
f="$app/secrets.env"
[ -f "$f" ] || exit 0
while IFS= read -r line; do [ "${line%%=*}" = "$1" ] && printf '%s\n' "${line#*=}"; done < "$f"
exit 0
"#;

/// `$1` id, `$2` host, `$3` port, `$4` user, `$5` database, `$6` keep, `$7` metadata
/// json without its closing brace; stdin: the pgpass file. Dumps with `pg_dump -Fc`,
/// verifies with `pg_restore --list`, stores `backups/<id>.dump` and `<id>.json`,
/// keeps the newest `$6`, prints the metadata.
pub const BACKUP_CREATE: &str = r#"
id=$1 host=$2 port=$3 user=$4 db=$5 keep=$6 meta=$7
dir="$app/backups"; mkdir -p "$dir"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/ferry-backup.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
(umask 077; cat > "$scratch/pgpass")
export PGPASSFILE="$scratch/pgpass" PGCONNECT_TIMEOUT=10
part="$dir/$id.dump.part"
if ! pg_dump -Fc -h "$host" -p "$port" -U "$user" -d "$db" -f "$part" 2> "$scratch/err"; then
  rm -f "$part"; echo "pg_dump failed:" >&2; cat "$scratch/err" >&2; exit 1
fi
if ! pg_restore --list "$part" > /dev/null 2> "$scratch/err"; then
  rm -f "$part"; echo "the dump does not verify (pg_restore --list):" >&2; cat "$scratch/err" >&2; exit 1
fi
sha=$(sha256sum "$part" | cut -d' ' -f1); size=$(stat -c %s "$part")
mv "$part" "$dir/$id.dump"
printf '%s,"size":%s,"sha256":"%s"}\n' "$meta" "$size" "$sha" > "$dir/$id.json"
ls "$dir" | grep '\.json$' | sort | head -n "-$keep" | while read -r f; do rm -f "$dir/$f" "$dir/${f%.json}.dump"; done
cat "$dir/$id.json"
"#;

/// Prints every backup's metadata, one JSON object per line.
pub const BACKUP_LIST: &str = r#"
dir="$app/backups"
[ -d "$dir" ] || exit 0
for f in "$dir"/*.json; do [ -f "$f" ] && cat "$f"; done
exit 0
"#;

/// `$1` id, `$2` host, `$3` port, `$4` user, `$5` database, `$6` sha256; stdin: the
/// pgpass file. Checks the dump's sha256, then restores it in one transaction.
pub const BACKUP_RESTORE: &str = r#"
id=$1 host=$2 port=$3 user=$4 db=$5 sha=$6
dump="$app/backups/$id.dump"
[ -f "$dump" ] || { echo "backup $id is not on this host" >&2; exit 1; }
[ "$(sha256sum "$dump" | cut -d' ' -f1)" = "$sha" ] || { echo "backup $id does not match its sha256" >&2; exit 1; }
scratch=$(mktemp -d "${TMPDIR:-/tmp}/ferry-restore.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
(umask 077; cat > "$scratch/pgpass")
export PGPASSFILE="$scratch/pgpass" PGCONNECT_TIMEOUT=10
pg_restore --clean --if-exists --single-transaction --no-owner -h "$host" -p "$port" -U "$user" -d "$db" "$dump"
"#;

/// `$1` id, `$2` metadata json, `$3` keep: records a dump uploaded to
/// `backups/<id>.dump` (taken elsewhere) and keeps the newest `$3`.
pub const BACKUP_REGISTER: &str = r#"
id=$1 meta=$2 keep=$3
dir="$app/backups"
[ -f "$dir/$id.dump" ] || { echo "backup $id was not uploaded" >&2; exit 1; }
printf '%s\n' "$meta" > "$dir/$id.json"
ls "$dir" | grep '\.json$' | sort | head -n "-$keep" | while read -r f; do rm -f "$dir/$f" "$dir/${f%.json}.dump"; done
"#;

/// `$1` volume json without its closing brace, `$2` id, `$3` size in GiB. Creates
/// `volumes/<id>/` after checking the filesystem has the room; prints
/// `nospace <free KiB>` instead when it has not.
pub const VOLUME_CREATE: &str = r#"
meta=$1 id=$2 size=$3
mkdir -p "$app/volumes"
free=$(df -Pk "$app/volumes" | awk 'NR == 2 { print $4 }')
if [ "$free" -lt $((size * 1024 * 1024)) ]; then echo "nospace $free"; exit 0; fi
mkdir -p "$app/volumes/$id/data"
printf '%s,"attached":null}\n' "$meta" > "$app/volumes/$id/volume.json"
echo created
"#;

/// `$1` id: removes a volume unless an instance holds it (prints `attached ID`).
pub const VOLUME_DESTROY: &str = r#"
v="$app/volumes/$1"
[ -f "$v/volume.json" ] || { echo "no volume $1 here" >&2; exit 1; }
a=$(sed -n 's/.*"attached":"\([^"]*\)".*/\1/p' "$v/volume.json")
if [ -n "$a" ]; then echo "attached $a"; exit 0; fi
rm -rf "$v"; echo destroyed
"#;

/// `$1` instance id, `$2` volume name, `$3` mount destination: binds the instance to
/// the volume it already holds, else to a free one of that name; links it as
/// `instances/<id>/mounts/<destination>` and prints the data path.
pub const VOLUME_ATTACH: &str = r#"
inst=$1 name=$2 dest=$3
mkdir -p "$app/volumes"
hold volumes/.attach
pick=""
for f in "$app"/volumes/*/volume.json; do
  [ -f "$f" ] || continue
  grep -qF "\"name\":\"$name\"" "$f" || continue
  if grep -qF "\"attached\":\"$inst\"" "$f"; then pick=$f; break; fi
  if [ -z "$pick" ] && grep -qF '"attached":null' "$f"; then pick=$f; fi
done
[ -n "$pick" ] || { echo "no free volume named $name on this host" >&2; exit 3; }
sed 's/"attached":[^}]*}$/"attached":"'"$inst"'"}/' "$pick" > "$pick.tmp" && mv "$pick.tmp" "$pick"
data="$(dirname "$pick")/data"
mkdir -p "$app/instances/$inst/mounts"
ln -sfn "$data" "$app/instances/$inst/mounts/$(printf %s "$dest" | tr -c 'A-Za-z0-9._-' '_')"
printf '%s\n' "$data"
"#;

/// Prints the secrets file as stored (`KEY=base64` lines), for copying to a host that
/// joined the app later.
pub const SECRETS_RAW: &str = r#"
f="$app/secrets.env"
[ -f "$f" ] && cat "$f"
true
"#;

/// stdin: a whole secrets file, which replaces this host's (0600, atomically).
pub const SECRETS_REPLACE: &str = r#"
mkdir -p "$app"
umask 077
cat > "$app/secrets.env.tmp.$$"
chmod 600 "$app/secrets.env.tmp.$$"
mv "$app/secrets.env.tmp.$$" "$app/secrets.env"
"#;
