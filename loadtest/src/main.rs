//! `loadtest`: the load harness that compares push strategies (WebSocket,
//! SSE, long-poll, interval polling) under load, against gateway nodes and
//! side by side with Nchan, and writes a report people can read.
//!
//! Modules, each with one job:
//!
//! - `scenario`: what a run does (flags and TOML files in
//!   `loadtest/scenarios/`), and which channels each subscriber holds.
//! - `payload`: the stamped test payload (channel, sequence, publish time)
//!   and the fast scan that reads it back from any frame.
//! - `track`: exact per-subscriber accounting of loss, duplicates and
//!   reordering.
//! - `http`: a small keep-alive HTTP/1.1 client and SSE parser for the hot
//!   path.
//! - `subscriber`: one subscriber connection in each transport and dialect,
//!   with resume after churn.
//! - `worker`: the `loadtest worker` process (up to ~15k connections on one
//!   thread, one source address) and its JSON-lines protocol with the parent.
//! - `publisher`: paced publishing over HTTP or straight into Redis.
//! - `redisbench`: what one Redis shard sustains (raw `PUBLISH` against the
//!   gateway's `gw_publish`).
//! - `procfs`: CPU, memory, bytes written and socket memory read from /proc.
//! - `services`: servers the harness starts itself (Redis, gateway, Nchan).
//! - `run`: one scenario against every target and transport.
//! - `sweep`: one dimension varied across runs.
//! - `report`, `charts`, `capacity`: report.md, report.json, SVG charts and
//!   the capacity plan.
//! - `smoke`: the CI smoke run.
//!
//! The hot path uses this crate's own small protocol code rather than the
//! `clients` crate: see `subscriber` for why.

mod capacity;
mod charts;
mod http;
mod payload;
mod procfs;
mod publisher;
mod redisbench;
mod report;
mod run;
mod scenario;
mod services;
mod smoke;
mod subscriber;
mod sweep;
mod track;
mod worker;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::scenario::{PublishVia, Scenario, Spread, TargetSpec, Transport};

/// Load harness for the notification gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a scenario against its targets and write the report.
    Run(RunArgs),
    /// Run a scenario several times, varying one dimension.
    Sweep(SweepArgs),
    /// Write report.md, report.json and charts from saved results.
    Report(ReportArgs),
    /// CI smoke run: every transport against a real gateway on a real Redis;
    /// fails unless nothing was lost, duplicated or reordered.
    Smoke(smoke::SmokeArgs),
    /// Internal: one worker process (started by `run`).
    #[command(hide = true)]
    Worker,
}

/// Scenario flags; each overrides the scenario file.
#[derive(Args, Debug, Clone, Default)]
struct ScenarioArgs {
    /// Scenario TOML file (see loadtest/scenarios/).
    #[arg(long, short)]
    scenario: Option<PathBuf>,
    /// Transports, comma-separated: ws, sse, longpoll, poll.
    #[arg(long, value_delimiter = ',')]
    transport: Vec<Transport>,
    /// Interval for `poll`, milliseconds.
    #[arg(long)]
    poll_interval_ms: Option<u64>,
    /// Subscriber connections.
    #[arg(long)]
    subscribers: Option<usize>,
    /// broadcast, per-user or mix.
    #[arg(long)]
    spread: Option<Spread>,
    /// User channels (per-user, mix); 0 = one per subscriber.
    #[arg(long)]
    channels: Option<usize>,
    /// Share of publishes to the broadcast channel under mix.
    #[arg(long)]
    broadcast_share: Option<f64>,
    /// Publishes per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Payload bytes.
    #[arg(long)]
    payload: Option<usize>,
    /// Publish phase, seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Connect ramp, seconds.
    #[arg(long)]
    ramp_up: Option<f64>,
    /// Churn: disconnects (with resume) per second.
    #[arg(long)]
    churn: Option<f64>,
    /// Reconnect storm at this many seconds into publishing.
    #[arg(long)]
    storm_at: Option<f64>,
    /// Share of subscribers dropped by the storm.
    #[arg(long)]
    storm_fraction: Option<f64>,
    /// Worker processes (0 = automatic).
    #[arg(long)]
    workers: Option<usize>,
    /// http or redis.
    #[arg(long)]
    publish_via: Option<PublishVia>,
    /// Targets: `gateway@127.0.0.1:8080`, `nchan@127.0.0.1:9000`, or
    /// `kind=gateway,bin=target/release/gateway,redis=spawn`,
    /// `kind=nchan,store=redis` (started by the peers script). Repeatable;
    /// replaces the file's targets.
    #[arg(long)]
    target: Vec<TargetSpec>,
    /// Name for reports.
    #[arg(long)]
    name: Option<String>,
    /// Pin the target to CPU 0 and the generator to the other CPUs.
    #[arg(long)]
    pin: bool,
}

impl ScenarioArgs {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        let mut s = match &self.scenario {
            Some(path) => Scenario::load(path)?,
            None => Scenario::default(),
        };
        if !self.transport.is_empty() {
            s.transports = self.transport.clone();
        }
        macro_rules! set {
            ($field:ident, $flag:ident) => {
                if let Some(v) = self.$flag.clone() {
                    s.$field = v;
                }
            };
        }
        set!(poll_interval_ms, poll_interval_ms);
        set!(subscribers, subscribers);
        set!(spread, spread);
        set!(channels, channels);
        set!(broadcast_share, broadcast_share);
        set!(rate, rate);
        set!(payload, payload);
        set!(duration_s, duration);
        set!(ramp_up_s, ramp_up);
        set!(workers, workers);
        set!(publish_via, publish_via);
        set!(name, name);
        if let Some(rate) = self.churn {
            s.churn.rate = rate;
        }
        if let Some(at) = self.storm_at {
            s.churn.storm_at_s = Some(at);
        }
        if let Some(f) = self.storm_fraction {
            s.churn.storm_fraction = f;
        }
        if !self.target.is_empty() {
            s.targets = self.target.clone();
        }
        if self.pin {
            s.pin = true;
        }
        s.validate()?;
        Ok(s)
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Output folder (default loadtest/out/NAME-TIME).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    capacity: capacity::CapacityArgs,
}

#[derive(Args, Debug)]
struct SweepArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Dimension: subscribers, payload, rate or transport.
    #[arg(long)]
    vary: sweep::Dimension,
    /// Values, comma-separated (e.g. 1000,5000,10000,15000).
    #[arg(long, value_delimiter = ',')]
    values: Vec<String>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    capacity: capacity::CapacityArgs,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Folders (or results.json files) of earlier runs; their results are
    /// combined.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Where to write the report (default: the first input folder).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    capacity: capacity::CapacityArgs,
}

fn main() {
    let cli = Cli::parse();

    // Workers keep stdout for their reports; everyone logs to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,loadtest=info")),
        )
        .init();

    let result = match cli.command {
        Cmd::Worker => worker::main(),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(dispatch(command))),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn dispatch(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Run(args) => {
            let s = args.scenario.scenario()?;
            let out = args.out.unwrap_or_else(|| run::default_out(&s.name));
            let results = run::run_all(&s, &out).await?;
            println!("{}", run::table(&results));
            report::save_results(&out, &results)?;
            report::write(&out, &results, &args.capacity.inputs())?;
            println!("report: {}", out.join("report.md").display());
            Ok(())
        }
        Cmd::Sweep(args) => {
            let s = args.scenario.scenario()?;
            let out = args
                .out
                .unwrap_or_else(|| run::default_out(&format!("{}-sweep", s.name)));
            let results = sweep::run(&s, args.vary, &args.values, &out).await?;
            println!("{}", run::table(&results));
            report::save_results(&out, &results)?;
            report::write(&out, &results, &args.capacity.inputs())?;
            println!("report: {}", out.join("report.md").display());
            Ok(())
        }
        Cmd::Report(args) => {
            let results = report::load_results(&args.inputs)?;
            let out = match args.out {
                Some(out) => out,
                None => {
                    let first = &args.inputs[0];
                    if first.is_dir() {
                        first.clone()
                    } else {
                        first.parent().map(PathBuf::from).unwrap_or_default()
                    }
                }
            };
            report::write(&out, &results, &args.capacity.inputs())?;
            println!("{}", run::table(&results));
            println!("report: {}", out.join("report.md").display());
            Ok(())
        }
        Cmd::Smoke(args) => smoke::run(args).await,
        Cmd::Worker => anyhow::bail!("the worker runs on its own runtime"),
    }
}
