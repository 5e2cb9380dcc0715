//! `ferry secrets set|unset|list`: values stored on every host in a 0600 file, handed to
//! instances and the release_command as env, never printed, logged or put on a
//! command line. Changing them restarts instances behind health checks unless `--stage`.

use std::io::Read as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::deploy::{lock, observe, Operation};
use crate::error::Error;
use crate::report::views::{SecretRow, Secrets};

use super::Ctx;

/// A secret value as it arrived, before it is stored.
struct Pair {
    key: String,
    value: String,
}

/// Names the key only: a value must never reach a log or a panic message.
impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<{} bytes>", self.key, self.value.len())
    }
}

/// Parses `K=V` arguments. `K=-` reads the value from stdin: from a prompt that does
/// not echo when stdin is a terminal, else the whole of stdin exactly as sent (once).
/// A value given on the command line works, with a warning: `ps` and shell history see it.
fn parse_pairs(ctx: Option<&Ctx>, pairs: &[String]) -> Result<Vec<Pair>, Error> {
    let mut parsed = Vec::new();
    let mut stdin_used = false;
    let interactive = ctx.is_some_and(|ctx| ctx.interactive);
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::usage(format!("`{}` is not KEY=VALUE", key_only(pair))));
        };
        valid_key(key)?;
        let value = if value == "-" {
            if interactive {
                prompt(key)?
            } else {
                if stdin_used {
                    return Err(Error::usage("only one secret can be read from a piped stdin"));
                }
                stdin_used = true;
                let value = read_stdin(key)?;
                if let (Some(ctx), true) = (ctx, value.ends_with('\n')) {
                    ctx.warn(format!(
                        "the value of {key} ends with a newline, which is kept; `printf %s` (not `echo`) leaves it out"
                    ));
                }
                value
            }
        } else {
            if let Some(ctx) = ctx {
                ctx.warn(format!(
                    "the value of {key} was passed on the command line, where `ps` and your shell's \
                     history can see it; `{key}=-` reads it from stdin instead"
                ));
            }
            value.to_string()
        };
        if value.contains('\0') {
            return Err(Error::usage(format!(
                "the value of {key} contains a NUL byte, which an environment variable cannot hold; nothing was stored"
            )));
        }
        if value.len() > MAX_VALUE {
            return Err(Error::usage(format!(
                "the value of {key} is {} bytes; an environment variable holds at most {MAX_VALUE}; nothing was stored",
                value.len()
            )));
        }
        parsed.push(Pair { key: key.to_string(), value });
    }
    Ok(parsed)
}

/// The kernel's limit for one `KEY=VALUE` environment string (`MAX_ARG_STRLEN`, 32 pages),
/// less room for the name: a longer value makes every start fail with "Argument list too long".
const MAX_VALUE: usize = 128 * 1024 - 256;

/// Reads a value from a terminal without echoing it; the Enter that ends it is not part
/// of it. Nothing typed is refused rather than stored as an empty secret.
fn prompt(key: &str) -> Result<String, Error> {
    let term = console::Term::stderr();
    if !term.is_term() {
        return Err(Error::Usage {
            message: format!("cannot prompt for {key}: stderr is not a terminal"),
            hint: Some(format!("pipe the value in: `printf %s \"$VALUE\" | ferry secrets set {key}=-`")),
        });
    }
    let value = term
        .write_str(&format!("value for {key} (not shown): "))
        .and_then(|()| term.read_secure_line())
        .map_err(|source| Error::Io { action: "read", path: "the terminal".into(), source })?;
    if value.is_empty() {
        return Err(Error::usage(format!("no value was typed for {key}; nothing was stored")));
    }
    Ok(value)
}

/// Reads the whole of stdin, exactly: a trailing newline is kept, since it may be meant.
fn read_stdin(key: &str) -> Result<String, Error> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).map_err(|source| Error::Io {
        action: "read",
        path: "stdin".into(),
        source,
    })?;
    String::from_utf8(bytes)
        .map_err(|_| Error::usage(format!("the value of {key} read from stdin is not UTF-8; nothing was stored")))
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
    let pairs = parse_pairs(Some(ctx), pairs)?;
    if pairs.is_empty() {
        return Err(Error::usage("nothing to set: pass KEY=VALUE"));
    }
    let keys: Vec<String> = pairs.iter().map(|p| p.key.clone()).collect();
    let set_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let lines = pairs.iter().fold(String::new(), |mut lines, p| {
        use std::fmt::Write as _;
        let _ = writeln!(lines, "{}={}", p.key, base64::engine::general_purpose::STANDARD.encode(&p.value));
        let _ = writeln!(lines, "#set {} {set_at}", p.key);
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

/// Stores the change on every host under the lock, then (unless `stage`) restarts the
/// instances behind their checks. It holds as a whole: a host that cannot store it, or
/// a restart that fails, puts every host's previous secrets back.
async fn store(ctx: &Ctx, keys: &[String], lines: String, stage: bool, command: &str) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    observe::observe(&fleet).await?;
    let guard = lock::take(&fleet, ctx.reporter.as_ref(), command, ctx.settings.lock_wait).await?;
    // Each host's file before and right after the change: it is put back only where it
    // is still what this command wrote.
    let mut before = Vec::new();
    let mut result = Ok(());
    for host in fleet.hosts() {
        let stored = match host.secrets_raw().await {
            Ok(raw) => match host.secrets_set(keys, lines.clone()).await {
                Ok(()) => host.secrets_raw().await.map(|after| before.push(Written { host, before: raw, after })),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(source) = stored {
            result = Err(Error::Host { step: "storing secrets", source });
            break;
        }
    }
    if result.is_err() {
        restore(ctx, &before).await;
    }
    guard.release().await;
    result?;
    if stage {
        ctx.finished(format!("staged {}; instances get them at the next deploy or `ferry restart`", keys.join(", ")));
        return Ok(());
    }
    let restarted =
        ctx.engine(&fleet).run(Operation::Restart { command: format!("{command} {}", keys.join(" ")) }).await;
    if restarted.is_err() && !ctx.settings.rollout.no_revert {
        // The instances run as they did before (the restart put them back); the stored
        // secrets follow, so the next deploy does not start with what just failed.
        match lock::take(&fleet, ctx.reporter.as_ref(), command, ctx.settings.lock_wait).await {
            Ok(guard) => {
                restore(ctx, &before).await;
                guard.release().await;
            }
            Err(e) => ctx.warn(format!(
                "the previous secrets could not be put back ({e}); `ferry secrets list` shows what is stored"
            )),
        }
    }
    restarted
}

/// One host's secrets file around this command's change.
struct Written<'a> {
    host: &'a crate::host::Host,
    before: String,
    after: String,
}

/// Puts each host's secrets file back as it was, where it is still what this command
/// wrote (a change someone made since is left alone, and named).
async fn restore(ctx: &Ctx, written: &[Written<'_>]) {
    let mut failed = Vec::new();
    for w in written {
        let now = w.host.secrets_raw().await;
        match now {
            Ok(now) if now == w.after => {
                if w.host.secrets_replace(w.before.clone()).await.is_err() {
                    failed.push(w.host.name.clone());
                }
            }
            Ok(now) if now == w.before => {}
            _ => failed.push(w.host.name.clone()),
        }
    }
    if failed.is_empty() {
        ctx.warn("the change was undone: every host has its previous secrets again");
    } else {
        ctx.warn(format!(
            "the previous secrets could not be put back on {}; run the same `ferry secrets` command again, or \
             `ferry secrets unset` what should not stay",
            failed.join(", ")
        ));
    }
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let Some(host) = fleet.hosts().next() else { return Ok(()) };
    let secrets = host.secrets_list().await.map_err(|source| Error::Host { step: "listing secrets", source })?;
    ctx.show(&Secrets(secrets.into_iter().map(|(name, set_at)| SecretRow { name, set_at }).collect()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_need_a_valid_name_and_never_echo_the_value() {
        let err = parse_pairs(None, &["1BAD=hunter2".into()]).unwrap_err().to_string();
        assert!(err.contains("1BAD") && !err.contains("hunter2"), "{err}");
        let err = parse_pairs(None, &["NOEQUALS".into()]).unwrap_err().to_string();
        assert!(err.contains("NOEQUALS"));
        let pairs = parse_pairs(None, &["A=b=c".into(), "B=line\n".into()]).unwrap();
        let pairs: Vec<_> = pairs.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
        assert_eq!(pairs, [("A", "b=c"), ("B", "line\n")], "values are kept exactly");
    }

    #[test]
    fn nul_bytes_and_oversized_values_are_refused_without_echoing_them() {
        let err = parse_pairs(None, &["K=hunter2\0x".into()]).unwrap_err().to_string();
        assert!(err.contains("NUL") && err.contains('K') && !err.contains("hunter2"), "{err}");
        let big = format!("K={}", "x".repeat(MAX_VALUE + 1));
        let err = parse_pairs(None, &[big]).unwrap_err().to_string();
        assert!(err.contains("at most") && !err.contains("xxxx"), "{err}");
    }
}
