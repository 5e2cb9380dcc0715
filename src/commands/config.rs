//! `ferry config validate` and `ferry config show`.

use crate::config::Warning;
use crate::error::Error;
use crate::report::views::Document;

use super::Ctx;

pub fn validate(ctx: &Ctx, warnings: &[Warning]) {
    let path = ctx.config_path.display();
    for warning in warnings {
        ctx.warn(format!("{path}:{warning}"));
    }
    let plural = if warnings.len() == 1 { "" } else { "s" };
    ctx.finished(format!("{path} is valid ({} warning{plural})", warnings.len()));
}

pub fn show(ctx: &Ctx) -> Result<(), Error> {
    let value = serde_json::to_value(ctx.config.as_ref())
        .map_err(|e| Error::failed(format!("could not print the config: {e}")))?;
    ctx.show(&Document(value));
    Ok(())
}
