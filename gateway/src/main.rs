//! The `gateway` binary: parse flags, install logging, raise the open-file
//! limit, and run a node (see the library's docs for what a node does).

use anyhow::Context;
use clap::Parser;
use gateway::{codes, config::Config};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if config.print_codes {
        print!("{}", codes::markdown());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open-file limit raised to the hard limit"),
        Err(e) => tracing::warn!(cause = %e, "could not raise the open-file limit"),
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(gateway::run(config))
}
