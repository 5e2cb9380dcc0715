//! `ferry pg status` and `ferry pg connect-url` for a PostgreSQL app deployed by ferry
//! (the `postgres` template): each instance's role, WAL position and replication lag,
//! and the addresses apps should read from and write to. The password is read from
//! the app's secrets to connect and is never printed.

use crate::deploy::{migrate, observe};
use crate::error::Error;
use crate::postgres::{query_text, Lsn};
use crate::report::views::{ConnectUrl, Member, Members};

use super::Ctx;

const STATUS_SQL: &str = "SELECT concat_ws('|', pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
     coalesce((SELECT status FROM pg_stat_wal_receiver LIMIT 1), ''), \
     coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::text, ''))";

pub async fn status(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    let Some(first) = fleet.hosts().next() else { return Ok(()) };
    let password = migrate::app_value(&ctx.settings, first, "POSTGRES_PASSWORD").await?;
    let mut members = Vec::new();
    for host in fleet.hosts() {
        for instance in observed.get(&host.name).map(|s| s.instances.clone()).unwrap_or_default() {
            let record = &instance.record;
            let mut member = Member {
                region: record.region.clone(),
                host: host.name.clone(),
                instance: record.id.clone(),
                address: format!("{}:{}", host.address(), record.port),
                role: "down".into(),
                lsn: None,
                lag_bytes: None,
                lag_seconds: None,
                streaming: None,
                error: None,
            };
            if instance.alive {
                let via = host.transport.forward(record.port).await.ok().filter(|_| !host.transport.is_local());
                match query_member(record.port, &password, via, STATUS_SQL).await {
                    Ok(Some(text)) => {
                        let parts: Vec<&str> = text.split('|').collect();
                        member.role = if parts.first() == Some(&"t") { "replica".into() } else { "primary".into() };
                        member.lsn = parts.get(1).map(|s| (*s).to_string()).filter(|s| !s.is_empty());
                        member.streaming = parts.get(2).map(|s| (*s).to_string()).filter(|s| !s.is_empty());
                        member.lag_seconds = parts.get(3).and_then(|s| s.parse().ok());
                    }
                    Ok(None) => member.error = Some("no answer".into()),
                    Err(e) => member.error = Some(e),
                }
            }
            members.push(member);
        }
    }
    let primary_lsn =
        members.iter().find(|m| m.role == "primary").and_then(|m| m.lsn.as_deref()).and_then(|l| l.parse::<Lsn>().ok());
    for member in members.iter_mut().filter(|m| m.role == "replica") {
        if let (Some(primary), Some(lsn)) = (primary_lsn, member.lsn.as_deref().and_then(|l| l.parse::<Lsn>().ok())) {
            member.lag_bytes = Some(primary.0.saturating_sub(lsn.0));
        }
    }
    ctx.show(&Members(members));
    Ok(())
}

/// Runs `sql` on the member listening on `port` of its host (through `via` when the
/// host is remote), as `postgres` with the app's password.
async fn query_member(
    port: u16,
    password: &str,
    via: Option<std::net::SocketAddr>,
    sql: &str,
) -> Result<Option<String>, String> {
    let (host, port) = via.map_or(("127.0.0.1".to_string(), port), |a| (a.ip().to_string(), a.port()));
    let conninfo = format!(
        "host={host} port={port} user=postgres dbname=postgres password='{}' connect_timeout=5",
        password.replace('\\', "\\\\").replace('\'', "\\'")
    );
    query_text(&conninfo, None, sql).await
}

/// Where apps in `region` should read (its nearest member) and write (the primary),
/// with the password left as `$POSTGRES_PASSWORD` for the app's config to fill in.
pub async fn connect_url(ctx: &Ctx, region: &str) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    let member = |wanted: &str| {
        fleet.hosts().filter(|h| h.region == wanted).find_map(|h| {
            let i = observed.get(&h.name)?.instances.iter().find(|i| i.alive && i.record.region == wanted)?;
            Some(format!("postgres://postgres:$POSTGRES_PASSWORD@{}:{}/postgres", h.address(), i.record.port))
        })
    };
    let primary = ctx.settings.primary.clone();
    let write = member(&primary)
        .ok_or_else(|| Error::failed(format!("no running member in the primary region `{primary}`")))?;
    let read = member(region).ok_or_else(|| Error::Usage {
        message: format!("no running member in `{region}`"),
        hint: Some(format!(
            "`ferry volumes create pg_data --region {region} --size 10` then `ferry scale count 1 --region {region}`"
        )),
    })?;
    ctx.show(&ConnectUrl { region: region.to_string(), read, write });
    Ok(())
}
