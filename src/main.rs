//! `ferry`: parse, run, print the error, exit. Exit codes: 0 ok, 1 the operation
//! failed (and what was restored is reported), 2 usage or configuration error.

use ferry::{cli, error::Error, run};

fn main() {
    let invocation = cli::parse();
    // The agent's roles run their own runtimes, before anything else is set up.
    if let cli::Command::Agent(role) = &invocation.command {
        std::process::exit(ferry::agent::main(role));
    }
    let reporter = run::reporter(invocation.output);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::failed(format!("could not start the async runtime: {e}")))
        .and_then(|runtime| runtime.block_on(run::run(invocation, reporter.clone())));
    reporter.finish();
    if let Err(error) = result {
        eprintln!("{}", run::render_error(&error));
        std::process::exit(error.exit_code());
    }
}
