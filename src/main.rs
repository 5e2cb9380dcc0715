//! `ferry`: parse, run, print the error, exit. Exit codes: 0 ok, 1 the operation
//! failed (and what was restored is reported), 2 usage or configuration error.

use ferry::{cli, error::Error, run};

/// The error and its causes on one line, as `--json` gives it.
fn crate_error_line(error: &Error) -> String {
    let text = run::render_error(error);
    let message = text.lines().take_while(|l| !l.trim_start().starts_with("hint:")).collect::<Vec<_>>().join(" ");
    message.trim_start_matches("error: ").split_whitespace().collect::<Vec<_>>().join(" ")
}

fn main() {
    let invocation = cli::parse();
    // The agent's roles run their own runtimes, before anything else is set up.
    if let cli::Command::Agent(role) = &invocation.command {
        std::process::exit(ferry::agent::main(role));
    }
    // `logs --follow` and `status --watch` end with Ctrl-C as a matter of course: it handles it itself.
    // So do `exec` and `console`: Ctrl-C is the command's.
    let follows = matches!(
        invocation.command,
        cli::Command::Logs { follow: true, .. } | cli::Command::Status { watch: true } | cli::Command::Exec { .. }
    );
    let tracked = std::sync::Arc::new(ferry::report::Tracked::new(run::reporter(invocation.output)));
    let reporter: std::sync::Arc<dyn ferry::report::Reporter> = tracked.clone();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::failed(format!("could not start the async runtime: {e}")))
        .and_then(|runtime| {
            let result = runtime.block_on(async {
                // Ctrl-C ends the run here, saying where it left the fleet; what the
                // hosts were doing is finished by running the command again.
                // On a worker, so that Ctrl-C is heard even while a prompt blocks a thread.
                let running = tokio::spawn(run::run(invocation, reporter.clone()));
                tokio::select! {
                    joined = running => joined.unwrap_or_else(|e| Err(Error::failed(format!("ferry failed: {e}")))),
                    _ = tokio::signal::ctrl_c(), if !follows => Err(Error::failed(tracked.progress().interrupted())),
                }
            });
            // Work still running (a build, a host's answer) is not waited for.
            runtime.shutdown_background();
            result
        });
    if let Err(Error::Exited { code }) = &result {
        reporter.finish();
        std::process::exit(*code);
    }
    if let Err(error) = &result {
        reporter.error(&crate_error_line(error), error.hint().as_deref(), error.exit_code());
    }
    reporter.finish();
    if let Err(error) = result {
        eprintln!("{}", run::render_error(&error));
        std::process::exit(error.exit_code());
    }
}
