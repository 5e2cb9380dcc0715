//! `ferry secrets set|unset|list`: values stored on every host in a 0600 file, handed to
//! instances and the release_command as env, never printed, logged or put on a
//! command line. Changing them restarts instances behind health checks unless `--stage`.

use std::io::Read as _;

use base64::Engine as _;

use crate::deploy::{lock, observe, Operation};
use crate::error::Error;
use crate::report::views::{SecretRow, Secrets};

use super::Ctx;

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

pub async fn set(ctx: &Ctx, pairs: &[String], stage: bool) -> Result<(), Error> {
    let pairs = parse_pairs(pairs)?;
    if pairs.is_empty() {
        return Err(Error::usage("nothing to set: pass KEY=VALUE"));
    }
    let keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
    let lines = pairs.iter().fold(String::new(), |mut lines, (k, v)| {
        use std::fmt::Write as _;
        let _ = writeln!(lines, "{k}={}", base64::engine::general_purpose::STANDARD.encode(v));
        lines
    });
    store(ctx, &keys, lines, stage, "secrets set").await
}

pub async fn unset(ctx: &Ctx, keys: &[String], stage: bool) -> Result<(), Error> {
    for key in keys {
        valid_key(key)?;
    }
    store(ctx, keys, String::new(), stage, "secrets unset").await
}

async fn store(ctx: &Ctx, keys: &[String], lines: String, stage: bool, command: &str) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    observe::observe(&fleet).await?;
    let guard = lock::take(&fleet, ctx.reporter.as_ref(), command, ctx.settings.lock_wait).await?;
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
        ctx.finished(format!("staged {}; instances get them at the next deploy or restart", keys.join(", ")));
        return Ok(());
    }
    ctx.engine(&fleet).run(Operation::Restart { command: format!("{command} {}", keys.join(" ")) }).await
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let Some(host) = fleet.hosts().next() else { return Ok(()) };
    let secrets = host.secrets_list().await.map_err(|source| Error::Host { step: "listing secrets", source })?;
    ctx.show(&Secrets(secrets.into_iter().map(|(name, digest)| SecretRow { name, digest }).collect()));
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
