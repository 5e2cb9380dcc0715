//! `ferry init`: a fly.toml for a project that has none. Looks at the directory for a
//! Mix project, a Rails, Node, Go, Python or Rust app, and writes `[ferry.build]` (how
//! the release is built, where it is, how one instance starts) with Fly's keys around
//! it; then says what to check, since every guess here is only a guess.

use std::path::Path;

use crate::error::Error;
use crate::report::Reporter;

pub struct InitOptions {
    /// The app's name (default: the directory's).
    pub name: Option<String>,
    /// The primary region (default: `local`).
    pub region: Option<String>,
    /// The fly.toml to write; the project is its directory.
    pub config: std::path::PathBuf,
}

/// What a kind of project builds and runs with.
struct Kind {
    what: &'static str,
    found: &'static str,
    command: String,
    path: String,
    start: String,
    port: u16,
    release_command: Option<&'static str>,
    env: &'static [(&'static str, &'static str)],
    check: &'static str,
}

pub fn run(opts: &InitOptions, reporter: &dyn Reporter) -> Result<(), Error> {
    let config = &opts.config;
    let dir = config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if config.exists() {
        return Err(Error::Usage {
            message: format!("`{}` already exists; nothing was written", config.display()),
            hint: Some("ferry reads it as it is: `ferry config validate` says what it makes of it".into()),
        });
    }
    let folder = std::path::absolute(dir).ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_string()));
    let name = match &opts.name {
        Some(name) => name.clone(),
        None => folder
            .unwrap_or_default()
            .to_ascii_lowercase()
            .replace([' ', '.'], "-")
            .trim_matches(['-', '_'])
            .to_string(),
    };
    let region = opts.region.clone().unwrap_or_else(|| "local".into());
    let Some(kind) = detect(dir, &name) else {
        return Err(Error::Usage {
            message: format!(
                "no project ferry recognises in `{}` (it looks for mix.exs, a Rails Gemfile, package.json, go.mod, requirements.txt or pyproject.toml, Cargo.toml)",
                dir.display()
            ),
            hint: Some("write fly.toml by hand: `fly.toml.example` in ferry's repository has every key".into()),
        });
    };
    if !crate::config::valid_app_name(&name) {
        return Err(Error::usage(format!("`{name}` is not a usable app name: pass `--name`")));
    }
    if !crate::config::valid_region_name(&region) {
        return Err(Error::usage(format!("`{region}` is not a region name: use lowercase letters, digits and `-`")));
    }
    let text = render(&name, &region, &kind);
    let io = |source| Error::Io { action: "write", path: config.display().to_string(), source };
    // Never over one written meanwhile.
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(config).map_err(io)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
    reporter.note(&format!("wrote {} for {} (found {})", config.display(), kind.what, kind.found));
    reporter.note("check, before the first `ferry deploy`:");
    reporter.note(&format!("  [ferry.build] command = {:?}: it builds the release", kind.command));
    reporter.note(&format!("  [ferry.build] start = {:?}: it runs one instance and listens on $PORT", kind.start));
    reporter.note(&format!("  internal_port = {}: the port users reach (each instance gets its own $PORT)", kind.port));
    reporter.note(&format!("  {}", kind.check));
    if let Some(command) = kind.release_command {
        reporter
            .note(&format!("  [deploy] release_command = {command:?}: runs once per deploy, before instances change"));
    }
    reporter.note("then `ferry config validate`, and `ferry deploy`");
    Ok(())
}

fn render(name: &str, region: &str, kind: &Kind) -> String {
    use std::fmt::Write as _;
    let q = |s: &str| toml_edit::Value::from(s).to_string();
    let mut text = format!(
        "# Written by `ferry init` for {}; check every value.\napp = {}\nprimary_region = {}\nkill_signal = \"SIGTERM\"\nkill_timeout = 10\n",
        kind.what,
        q(name),
        q(region)
    );
    if let Some(command) = kind.release_command {
        let _ = write!(text, "\n[deploy]\n  release_command = {}\n", q(command));
    }
    if !kind.env.is_empty() {
        text.push_str("\n[env]\n");
        for (key, value) in kind.env {
            let _ = writeln!(text, "  {key} = {}", q(value));
        }
    }
    let _ = write!(
        text,
        "\n[http_service]\n  internal_port = {}\n  force_https = true\n\n  [[http_service.checks]]\n    path = \"/\"\n    interval = \"10s\"\n    timeout = \"2s\"\n    grace_period = \"5s\"\n",
        kind.port
    );
    let _ = write!(
        text,
        "\n[ferry.build]\n  command = {}\n  path = {}\n  start = {}\n\n[ferry.regions.{region}]\n  count = 1\n",
        q(&kind.command),
        q(&kind.path),
        q(&kind.start)
    );
    text
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// `key = "value"` (or `key: :value` in Elixir) from a manifest, simply.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().trim_start_matches(['[', '{']).strip_prefix(key)?.trim_start();
        let rest = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':'))?.trim();
        let value: String = rest
            .trim_start_matches(['"', ':', '\''])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            .collect();
        (!value.is_empty()).then_some(value)
    })
}

fn detect(dir: &Path, name: &str) -> Option<Kind> {
    if let Some(mix) = read(dir, "mix.exs") {
        let app = field(&mix, "app").unwrap_or_else(|| name.replace('-', "_"));
        let phoenix = mix.contains(":phoenix");
        return Some(Kind {
            what: if phoenix { "a Phoenix app (Mix release)" } else { "a Mix release" },
            found: "mix.exs",
            command: "MIX_ENV=prod mix do deps.get --only prod, compile, release --overwrite".into(),
            path: format!("_build/prod/rel/{app}"),
            start: format!("bin/{app} start"),
            port: if phoenix { 4000 } else { 8080 },
            release_command: phoenix.then_some("bin/migrate"),
            env: if phoenix { &[("PHX_SERVER", "true"), ("PHX_HOST", "example.com")] } else { &[] },
            check: if phoenix {
                "bin/migrate: `mix phx.gen.release` writes it; set PHX_HOST, and `ferry secrets set SECRET_KEY_BASE=-`"
            } else {
                "the release must listen on $PORT; `bin/APP remote` is a console (`ferry console -- bin/APP remote`)"
            },
        });
    }
    if read(dir, "Gemfile").is_some_and(|g| g.contains("rails")) {
        return Some(Kind {
            what: "a Rails app",
            found: "Gemfile with rails",
            command: "bundle config set --local deployment true && bundle install && bin/rails assets:precompile"
                .into(),
            path: ".".into(),
            start: "bin/rails server -b 127.0.0.1 -p $PORT".into(),
            port: 3000,
            release_command: Some("bin/rails db:prepare"),
            env: &[("RAILS_ENV", "production"), ("RAILS_LOG_TO_STDOUT", "1")],
            check: "`ferry secrets set RAILS_MASTER_KEY=-` (and DATABASE_URL)",
        });
    }
    if let Some(package) = read(dir, "package.json") {
        let build = if package.contains("\"build\"") { " && npm run build" } else { "" };
        return Some(Kind {
            what: "a Node app",
            found: "package.json",
            command: format!("npm ci{build}"),
            path: ".".into(),
            start: "npm start".into(),
            port: 3000,
            release_command: None,
            env: &[("NODE_ENV", "production")],
            check: "`npm start` must listen on process.env.PORT",
        });
    }
    if read(dir, "go.mod").is_some() {
        return Some(Kind {
            what: "a Go app",
            found: "go.mod",
            command: format!("CGO_ENABLED=0 go build -o _build/rel/bin/{name} ."),
            path: "_build/rel".into(),
            start: format!("bin/{name}"),
            port: 8080,
            release_command: None,
            env: &[],
            check: "it must listen on os.Getenv(\"PORT\")",
        });
    }
    if read(dir, "requirements.txt").is_some() || read(dir, "pyproject.toml").is_some() {
        let requirements = read(dir, "requirements.txt").is_some();
        return Some(Kind {
            what: "a Python app",
            found: if requirements { "requirements.txt" } else { "pyproject.toml" },
            command: if requirements {
                "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt gunicorn".into()
            } else {
                "python3 -m venv .venv && .venv/bin/pip install . gunicorn".into()
            },
            path: ".".into(),
            start: ".venv/bin/gunicorn --bind 127.0.0.1:$PORT app:app".into(),
            port: 8000,
            release_command: None,
            env: &[("PYTHONUNBUFFERED", "1")],
            check: "the start command guesses a WSGI app `app:app` served by gunicorn: name yours",
        });
    }
    if let Some(cargo) = read(dir, "Cargo.toml") {
        let bin = field(&cargo, "name").unwrap_or_else(|| name.to_string());
        return Some(Kind {
            what: "a Rust app",
            found: "Cargo.toml",
            command: format!(
                "cargo build --release && mkdir -p _build/rel/bin && cp target/release/{bin} _build/rel/bin/"
            ),
            path: "_build/rel".into(),
            start: format!("bin/{bin}"),
            port: 8080,
            release_command: None,
            env: &[],
            check: "it must listen on the PORT environment variable",
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_manifests() {
        assert_eq!(field("  def project do\n    [app: :shop_web,\n", "app").as_deref(), Some("shop_web"));
        assert_eq!(field("    app: :shop,\n", "app").as_deref(), Some("shop"));
        assert_eq!(field("[package]\nname = \"hello-rs\"\n", "name").as_deref(), Some("hello-rs"));
    }
}
