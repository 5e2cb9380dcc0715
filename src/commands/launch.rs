//! `ferry launch --template postgres`: writes a new app's fly.toml and release from
//! the templates shipped in `templates/` (compiled into the binary).

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::report::Reporter;

const POSTGRES_FLY: &str = include_str!("../../templates/postgres/fly.toml");
const POSTGRES_START: &str = include_str!("../../templates/postgres/release/bin/start");

pub struct LaunchOptions {
    pub template: String,
    pub name: String,
    pub region: String,
    pub dir: Option<PathBuf>,
}

pub fn run(opts: &LaunchOptions, reporter: &dyn Reporter) -> Result<(), Error> {
    if opts.template != "postgres" {
        return Err(Error::usage(format!("unknown template `{}` (templates: postgres)", opts.template)));
    }
    let valid = |s: &str, extra: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
    };
    if !valid(&opts.name, "-_") {
        return Err(Error::usage(format!(
            "invalid app name `{}`: use lowercase letters, digits, `-` and `_`",
            opts.name
        )));
    }
    if !valid(&opts.region, "-") {
        return Err(Error::usage(format!("invalid region `{}`", opts.region)));
    }
    let dir = opts.dir.clone().unwrap_or_else(|| PathBuf::from(&opts.name));
    let config = dir.join("fly.toml");
    if config.exists() {
        return Err(Error::usage(format!("`{}` already exists; nothing was written", config.display())));
    }
    let fly = POSTGRES_FLY.replace("{{app}}", &opts.name).replace("{{region}}", &opts.region);
    write(&config, &fly, false)?;
    write(&dir.join("release").join("bin").join("start"), POSTGRES_START, true)?;
    reporter.note(&format!("wrote {} and {}", config.display(), dir.join("release/bin/start").display()));
    reporter.note(&format!("next, in {}:", dir.display()));
    reporter.note("  ferry secrets set POSTGRES_PASSWORD=-");
    reporter.note(&format!("  ferry volumes create pg_data --region {} --size 10", opts.region));
    reporter.note("  ferry deploy");
    Ok(())
}

fn write(path: &Path, text: &str, executable: bool) -> Result<(), Error> {
    let io = |source| Error::Io { action: "write", path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    Ok(())
}
