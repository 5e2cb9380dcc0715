//! `ferry doctor`: checks each host the way a deploy will use it (the connection and
//! its host key, the tools and disk there, its clock, port forwarding, the agent) and
//! says what to fix. Changes nothing on the hosts, except starting an agent that is
//! not running.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::host::Host;
use crate::report::views::{Doctor, DoctorRow};
use crate::transport::Cmd;

use super::Ctx;

/// Below this much free space in the deploy root, a deploy is likely to fail.
const DISK_LOW: u64 = 200 * 1024 * 1024;
/// Below this much, it is said as a warning.
const DISK_TIGHT: u64 = 1024 * 1024 * 1024;
/// Clocks further apart than this read lock leases (stale after 30 s) wrong.
const SKEW_BAD: u64 = 20;
const SKEW_NOTED: u64 = 2;

/// What the host says of itself, one `key=value` per line; `df` of the deploy root
/// (or the nearest directory of it that exists).
const FACTS: &str = r#"root=$1
case $root in "~/"*) root=$HOME/${root#"~/"};; "~") root=$HOME;; esac
d=$root
while [ ! -e "$d" ]; do d=$(dirname "$d"); done
echo "now=$(date +%s)"
echo "avail=$(df -Pk "$d" | awk 'NR==2 {print $4}')"
echo "dir=$d"
# Where this connection's sshd listens, as the host sees it: what forwarding is tried on.
if [ -n "${SSH_CONNECTION:-}" ]; then set -- $SSH_CONNECTION; echo "sshd=$3 $4"; fi
for tool in sh tar gzip pg_dump; do
  if command -v "$tool" >/dev/null 2>&1; then echo "tool.$tool=yes"; else echo "tool.$tool=no"; fi
done
"#;

pub async fn run(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let wants_pg_dump = ctx.settings.backup.run == crate::config::BackupRun::Host
        && (ctx.settings.migration.backup_first || ctx.settings.migration.command.is_some());
    let root = match ctx.settings.target {
        crate::config::Target::Local => None,
        crate::config::Target::Ssh => Some(ctx.settings.root.clone()),
    };
    let rows = crate::host::on_each(fleet.hosts().cloned(), |host| {
        let root = root.clone();
        async move { check_host(&host, root.as_deref(), wants_pg_dump).await }
    })
    .await;
    let rows: Vec<DoctorRow> = rows.into_iter().flat_map(|(_, rows)| rows).collect();
    let failed = rows.iter().filter(|r| r.status == "fail").count();
    ctx.show(&Doctor(rows));
    if failed > 0 {
        return Err(Error::Failed {
            message: format!("{failed} check(s) failed"),
            hint: Some("fix what each failed check says, then run `ferry doctor` again".into()),
        });
    }
    Ok(())
}

fn row(host: &Host, check: &str, status: &'static str, detail: String, fix: Option<String>) -> DoctorRow {
    DoctorRow { host: host.name.clone(), region: host.region.clone(), check: check.into(), status, detail, fix }
}

async fn check_host(host: &Host, root: Option<&str>, wants_pg_dump: bool) -> Vec<DoctorRow> {
    let mut rows = Vec::new();
    if let Err(e) = host.transport.connect().await {
        let fix = match &e {
            crate::transport::TransportError::HostKey { .. } => {
                "compare the host key with whoever runs the host (a changed key can mean someone is in between); `--accept-new-host-keys` trusts a key never seen before, never a changed one"
            }
            _ => "check that the host is up, that `ssh` reaches it as this user without a password, and the address in fly.toml",
        };
        rows.push(row(host, "connection", "fail", crate::error::chain(&e), Some(fix.into())));
        return rows;
    }
    if !host.transport.is_local() {
        rows.push(row(host, "connection", "ok", "ssh reaches it; its host key is known".into(), None));
    }
    let dir = root.map_or_else(|| host.app_dir.clone(), str::to_string);
    let mut sshd = None;
    match host.transport.exec(&Cmd::script(FACTS).arg(dir)).await {
        Ok(out) if out.success() => {
            let text = out.stdout_str();
            sshd = text.lines().find_map(|l| {
                let (ip, port) = l.strip_prefix("sshd=")?.split_once(' ')?;
                Some((ip.to_string(), port.trim().parse::<u16>().ok()?))
            });
            rows.extend(facts(host, &text, wants_pg_dump));
        }
        Ok(out) => rows.push(row(host, "tools", "fail", out.stderr_str().trim().to_string(), None)),
        Err(e) => rows.push(row(host, "tools", "fail", crate::error::chain(&e), None)),
    }
    if !host.transport.is_local() {
        rows.push(forwarding(host, sshd).await);
    }
    match host.observe().await {
        Ok(_) => rows.push(row(host, "agent", "ok", "answers".into(), None)),
        Err(e) => rows.push(row(
            host,
            "agent",
            "fail",
            crate::error::chain(&e),
            Some("the agent's log is on the host, in `agent.log` under `/tmp/ferry-<uid>-*/`".into()),
        )),
    }
    rows
}

fn facts(host: &Host, text: &str, wants_pg_dump: bool) -> Vec<DoctorRow> {
    let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::to_string);
    let mut rows = Vec::new();
    let missing: Vec<&str> =
        ["sh", "tar", "gzip"].into_iter().filter(|t| value(&format!("tool.{t}")).as_deref() != Some("yes")).collect();
    rows.push(if missing.is_empty() {
        row(host, "tools", "ok", "sh, tar and gzip are there".into(), None)
    } else {
        row(
            host,
            "tools",
            "fail",
            format!("missing: {}", missing.join(", ")),
            Some("install them with the host's package manager".into()),
        )
    });
    if wants_pg_dump && value("tool.pg_dump").as_deref() != Some("yes") {
        rows.push(row(
            host,
            "pg_dump",
            "warn",
            "not found, and backups run on the hosts".into(),
            Some("install postgresql-client there, or set `[ferry.backup] run = \"local\"`".into()),
        ));
    }
    let dir = value("dir").unwrap_or_default();
    if let Some(avail) = value("avail").and_then(|a| a.trim().parse::<u64>().ok()).map(|kb| kb * 1024) {
        let free = format!("{} MiB free in {dir}", avail / (1024 * 1024));
        rows.push(match avail {
            a if a < DISK_LOW => {
                row(host, "disk", "fail", free, Some("free some space: a release is unpacked there".into()))
            }
            a if a < DISK_TIGHT => row(host, "disk", "warn", free, Some("a few releases may not fit".into())),
            _ => row(host, "disk", "ok", free, None),
        });
    }
    if let Some(remote) = value("now").and_then(|n| n.trim().parse::<u64>().ok()) {
        let here = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let skew = here.abs_diff(remote);
        let detail = format!("{skew} s from this machine's clock");
        let fix = || Some("run NTP (systemd-timesyncd or chrony) on the host".to_string());
        rows.push(match skew {
            s if s > SKEW_BAD => row(host, "clock", "fail", detail, fix()),
            s if s > SKEW_NOTED => row(host, "clock", "warn", detail, fix()),
            _ => row(host, "clock", "ok", detail, None),
        });
    }
    rows
}

/// Port forwarding through the host's connection (replica waits and `ferry pg` use it),
/// tried against the host's own sshd: it greets with `SSH-` through a working forward.
async fn forwarding(host: &Host, sshd: Option<(String, u16)>) -> DoctorRow {
    let Some((ip, port)) = sshd else {
        return row(host, "forwarding", "warn", "the host did not say where its sshd listens".into(), None);
    };
    let fix = Some(
        "allow it in the host's sshd_config (`AllowTcpForwarding local`) if a region waits for a read replica or you use `ferry pg`".to_string(),
    );
    match host.transport.forward_to(&ip, port).await {
        Ok(Some(addr)) => {
            let greeting = tokio::time::timeout(Duration::from_secs(5), async {
                use tokio::io::AsyncReadExt as _;
                let mut stream = tokio::net::TcpStream::connect(addr).await?;
                let mut banner = [0u8; 4];
                stream.read_exact(&mut banner).await.map(|_| banner)
            })
            .await;
            match greeting {
                Ok(Ok(banner)) if &banner == b"SSH-" => {
                    row(host, "forwarding", "ok", "ssh forwards ports".into(), None)
                }
                _ => row(host, "forwarding", "warn", "the host's sshd refuses to forward ports".into(), fix),
            }
        }
        Ok(None) => row(host, "forwarding", "ok", "not needed here".into(), None),
        Err(e) => row(host, "forwarding", "warn", crate::error::chain(&e), fix),
    }
}
