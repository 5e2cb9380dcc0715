//! `ferry release build`: run the build command and pack the release directory into a
//! deterministic tarball; its path on stdout, its version, sha256 and size beside it.

use std::path::PathBuf;

use crate::error::Error;
use crate::release::{self, BuildSpec};
use crate::report::views::BuiltRelease;

use super::Ctx;

pub async fn run(ctx: &Ctx, version: Option<String>, output: Option<PathBuf>) -> Result<(), Error> {
    let spec = BuildSpec {
        app: ctx.settings.app.clone(),
        dir: ctx.settings.dir.clone(),
        command: ctx.settings.build.command.clone(),
        path: ctx.settings.build.path.clone(),
        output: output.unwrap_or_else(|| ctx.settings.build_dir()),
    };
    let artifact = release::build(spec, version).await?;
    ctx.reporter.note(&format!("version {}  sha256 {}  {} bytes", artifact.version, artifact.sha256, artifact.size));
    ctx.show(&BuiltRelease {
        path: artifact.path.display().to_string(),
        sha256: artifact.sha256,
        size: artifact.size,
        version: artifact.version,
    });
    Ok(())
}
