//! `ferry config validate` and `ferry config show`.

use crate::error::Error;

use super::Ctx;

pub fn validate(ctx: &Ctx, warnings: &[crate::config::Warning]) {
    for warning in warnings {
        eprintln!("warning: {}:{warning}", ctx.config_path.display());
    }
    eprintln!(
        "{} is valid ({} warning{})",
        ctx.config_path.display(),
        warnings.len(),
        if warnings.len() == 1 { "" } else { "s" }
    );
}

pub fn show(ctx: &Ctx) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(ctx.config.as_ref())
        .map_err(|e| Error::failed(format!("could not print the config: {e}")))?;
    println!("{text}");
    Ok(())
}
