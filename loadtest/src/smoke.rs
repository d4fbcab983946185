//! `loadtest smoke`: the CI smoke run. It starts only what it is given (a
//! gateway binary and a redis-server binary, or the addresses of ones
//! already running), runs a few hundred subscribers for a few seconds on
//! every transport, publishing over HTTP and once straight into Redis, writes
//! the report, and fails unless every message arrived exactly once and in
//! order and the report files exist. It asserts nothing about timing.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use crate::{
    capacity::CapacityArgs,
    report,
    run::{self, RunResult},
    scenario::{PublishVia, Scenario, Spread, TargetKind, TargetSpec, Transport},
    services,
};

/// Smoke-run options.
#[derive(Args, Debug)]
pub struct SmokeArgs {
    /// A running gateway to test (its Redis must be given with --redis).
    #[arg(long)]
    gateway: Option<String>,
    /// Gateway binary to start when no --gateway is given.
    #[arg(long, default_value = "target/release/gateway")]
    gateway_bin: PathBuf,
    /// Redis URL the gateway uses; when absent a private redis-server is
    /// started on a free port.
    #[arg(long)]
    redis: Option<String>,
    /// redis-server binary for the private Redis.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Subscribers per transport.
    #[arg(long, default_value_t = 300)]
    subscribers: usize,
    /// Publish phase per transport, seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Transports to run.
    #[arg(long, value_delimiter = ',', default_value = "ws,sse,longpoll,poll")]
    transports: Vec<Transport>,
    /// Churn (disconnects with resume per second) during publishing.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Output folder (default loadtest/out/smoke-TIME).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    capacity: CapacityArgs,
}

/// The scenario every smoke transport runs.
fn scenario(args: &SmokeArgs) -> Scenario {
    let mut s = Scenario {
        name: "smoke".into(),
        transports: args.transports.clone(),
        poll_interval_ms: 250,
        longpoll_timeout_s: 20,
        subscribers: args.subscribers,
        spread: Spread::Mix,
        channels: (args.subscribers / 4).max(1),
        broadcast_share: 0.2,
        rate: 60.0,
        payload: 200,
        duration_s: args.duration,
        ramp_up_s: 1.0,
        settle_s: 0.5,
        drain_s: 15.0,
        workers: 2,
        publishers: 4,
        ..Scenario::default()
    };
    s.churn.rate = args.churn;
    s.churn.reconnect_ms = 50;
    s
}

/// What is wrong with one result, if anything.
fn faults(r: &RunResult) -> Vec<String> {
    let mut f = Vec::new();
    let name = format!(
        "{} {} via {:?}",
        r.target,
        r.transport.map(|t| t.name()).unwrap_or("?"),
        r.publish_via
    );
    if r.failed > 0 {
        f.push(format!("{name}: {} subscribers never connected", r.failed));
    }
    if r.published == 0 || r.delivered == 0 {
        f.push(format!("{name}: nothing was published or delivered"));
    }
    if r.lost > 0 || r.delivered != r.expected {
        f.push(format!(
            "{name}: {} lost ({} of {} delivered)",
            r.lost, r.delivered, r.expected
        ));
    }
    if r.duplicates > 0 {
        f.push(format!("{name}: {} duplicates", r.duplicates));
    }
    if r.reordered > 0 {
        f.push(format!("{name}: {} reordered", r.reordered));
    }
    if r.resume_failures > 0 {
        f.push(format!(
            "{name}: {} resumes not honoured",
            r.resume_failures
        ));
    }
    f
}

/// Run the smoke test.
pub async fn run(args: SmokeArgs) -> anyhow::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| run::default_out("smoke"));
    std::fs::create_dir_all(&out)?;

    // Redis and gateway: given, or started here.
    let mut started = Vec::new();
    let redis_url = match &args.redis {
        Some(url) => url.clone(),
        None => {
            let redis = services::start_redis(&args.redis_server).await?;
            let url = redis.redis_url();
            started.push(redis);
            url
        }
    };
    let addr = match &args.gateway {
        Some(addr) => addr.clone(),
        None => {
            let log = out.join("gateway.log");
            let gw = services::start_gateway(&args.gateway_bin, Some(&redis_url), &log)
                .await
                .with_context(|| format!("starting {}", args.gateway_bin.display()))?;
            let addr = gw.addr.to_string();
            started.push(gw);
            addr
        }
    };

    // Every transport over HTTP publish, then WebSocket once through Redis.
    let spec = TargetSpec {
        name: Some("gateway-redis".into()),
        kind: Some(TargetKind::Gateway),
        addr: Some(addr),
        redis: Some(redis_url),
        ..TargetSpec::default()
    };
    let mut s = scenario(&args);
    s.targets = vec![spec];
    let mut results = run::run_all(&s, &out).await?;
    let mut via_redis = s.clone();
    via_redis.transports = vec![Transport::Ws];
    via_redis.publish_via = PublishVia::Redis;
    results.extend(run::run_all(&via_redis, &out).await?);

    for service in started.into_iter().rev() {
        service.stop().await;
    }

    println!("{}", run::table(&results));
    report::save_results(&out, &results)?;
    report::write(&out, &results, &args.capacity.inputs())?;

    let mut problems = Vec::new();
    let mut passed = 0;
    let mut failed = 0;
    for r in &results {
        let f = faults(r);
        if f.is_empty() {
            passed += 1;
        } else {
            failed += 1;
            problems.extend(f);
        }
    }
    for file in [
        "report.md",
        "report.json",
        "results.json",
        "charts/latency-smoke.svg",
    ] {
        let path = out.join(file);
        let written = std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if written {
            passed += 1;
        } else {
            failed += 1;
            problems.push(format!("{} was not written", path.display()));
        }
    }
    println!("report: {}", out.join("report.md").display());
    println!("smoke: {passed} passed, {failed} failed");
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("FAIL {p}");
        }
        bail!(
            "smoke run found {} problem(s); report in {}",
            problems.len(),
            out.display()
        );
    }
    Ok(())
}
