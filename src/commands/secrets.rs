//! `ferry secrets set|unset|list`: values stored on every host in a 0600 file, handed to
//! instances and the release_command as env, never printed, logged or put on a
//! command line. Changing them restarts instances behind health checks unless `--stage`.

use std::io::Read as _;

use base64::Engine as _;

use std::collections::BTreeMap;

use crate::error::Error;
use crate::fleet::Fleet;
use crate::host::HostState;
use crate::report::{Event, Outcome};

use super::{lock, observe, Ctx};

pub struct SetOptions {
    pub pairs: Vec<String>,
    pub stage: bool,
}

/// Parses `K=V` arguments (`K=-` reads the value from stdin, once).
fn parse_pairs(pairs: &[String]) -> Result<Vec<(String, String)>, Error> {
    let mut parsed = Vec::new();
    let mut stdin_used = false;
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::usage(format!("`{}` is not KEY=VALUE", key_only(pair))));
        };
        valid_key(key)?;
        let value = if value == "-" {
            if stdin_used {
                return Err(Error::usage("only one secret can be read from stdin"));
            }
            stdin_used = true;
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|source| Error::Io {
                action: "read",
                path: "stdin".into(),
                source,
            })?;
            text.strip_suffix('\n').map(str::to_string).unwrap_or(text)
        } else {
            value.to_string()
        };
        parsed.push((key.to_string(), value));
    }
    Ok(parsed)
}

/// The part of an argument before `=`, so a malformed pair never echoes a value.
fn key_only(pair: &str) -> &str {
    pair.split('=').next().unwrap_or("")
}

fn valid_key(key: &str) -> Result<(), Error> {
    let mut chars = key.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "invalid secret name `{key}`: use letters, digits and `_`, not starting with a digit"
        )))
    }
}

pub async fn set(ctx: &Ctx, opts: SetOptions) -> Result<(), Error> {
    let pairs = parse_pairs(&opts.pairs)?;
    if pairs.is_empty() {
        return Err(Error::usage("nothing to set: pass KEY=VALUE"));
    }
    let keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
    let lines = pairs.iter().fold(String::new(), |mut lines, (k, v)| {
        use std::fmt::Write as _;
        let _ = writeln!(lines, "{k}={}", base64::engine::general_purpose::STANDARD.encode(v));
        lines
    });
    store(ctx, &keys, lines, opts.stage, "secrets set").await
}

pub async fn unset(ctx: &Ctx, keys: Vec<String>, stage: bool) -> Result<(), Error> {
    for key in &keys {
        valid_key(key)?;
    }
    store(ctx, &keys, String::new(), stage, "secrets unset").await
}

async fn store(ctx: &Ctx, keys: &[String], lines: String, stage: bool, command: &str) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    observe(&fleet).await?;
    let guard = lock(ctx, &fleet, command, None).await?;
    let mut result = Ok(());
    for host in fleet.hosts() {
        if let Err(source) = host.secrets_set(keys, lines.clone()).await {
            result = Err(Error::Host { step: "storing secrets", source });
            break;
        }
    }
    guard.release().await;
    result?;
    if stage {
        ctx.event(Event::Finished {
            outcome: Outcome::Succeeded,
            version: None,
            previous: None,
            message: format!("staged {}; instances get them at the next deploy or restart", keys.join(", ")),
            duration_ms: 0,
        });
        return Ok(());
    }
    super::deploy::restart(ctx, &format!("{command} {}", keys.join(" "))).await
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let Some(host) = fleet.hosts().next() else { return Ok(()) };
    let secrets = host.secrets_list().await.map_err(|source| Error::Host { step: "listing secrets", source })?;
    if ctx.json {
        let rows: Vec<_> = secrets.iter().map(|(k, d)| serde_json::json!({"name": k, "digest": d})).collect();
        println!("{}", serde_json::Value::Array(rows));
    } else if secrets.is_empty() {
        println!("no secrets; `ferry secrets set KEY=VALUE` adds one");
    } else {
        println!("{:<32} DIGEST", "NAME");
        for (k, d) in secrets {
            println!("{k:<32} {d}");
        }
    }
    Ok(())
}

/// Gives hosts that joined the app after its secrets were set (a new region, a new
/// host) the same secrets as the primary's first host.
/// Uses the secrets digests `observed` already holds, so it costs nothing when every
/// host agrees.
pub async fn sync(ctx: &Ctx, fleet: &Fleet, observed: &BTreeMap<String, HostState>) -> Result<(), Error> {
    let Some(reference) = fleet.primary().and_then(|r| r.hosts.first()) else { return Ok(()) };
    let digest = |host: &str| observed.get(host).and_then(|s| s.secrets.clone());
    let wanted = digest(&reference.name);
    let mut raw = None;
    for host in fleet.hosts().filter(|h| h.name != reference.name) {
        if digest(&host.name) == wanted {
            continue;
        }
        if raw.is_none() {
            raw =
                Some(reference.secrets_raw().await.map_err(|source| Error::Host { step: "reading secrets", source })?);
        }
        host.secrets_replace(raw.clone().unwrap_or_default())
            .await
            .map_err(|source| Error::Host { step: "copying secrets", source })?;
        ctx.event(Event::Warning {
            message: format!("copied the app's secrets to `{}`, which did not have them", host.name),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_need_a_valid_name_and_never_echo_the_value() {
        let err = parse_pairs(&["1BAD=hunter2".into()]).unwrap_err().to_string();
        assert!(err.contains("1BAD") && !err.contains("hunter2"), "{err}");
        let err = parse_pairs(&["NOEQUALS".into()]).unwrap_err().to_string();
        assert!(err.contains("NOEQUALS"));
        assert_eq!(parse_pairs(&["A=b=c".into()]).unwrap(), [("A".to_string(), "b=c".to_string())]);
    }
}
