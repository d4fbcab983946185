//! `loadtest run`: drive one scenario against every target and transport.
//! For each pair it starts the worker processes, waits until every
//! subscriber is connected, reads the target's memory idle, publishes for the
//! scenario's duration while sampling CPU, tells the workers the last
//! sequence per channel, collects their exact counts and histograms, and
//! turns it all into one [`RunResult`]. Targets the harness starts (gateway,
//! Redis, Nchan) are stopped when their runs are done.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
};

use crate::{
    payload, procfs,
    publisher::{self, PublishPlan},
    scenario::{PublishVia, Scenario, Spread, TargetKind, TargetSpec, Transport},
    services::{self, Service},
    worker::{self, Assignment, Command as WorkerCommand, Final, Progress, Report},
};

/// Latency and timing percentiles, microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// Percentiles of a histogram.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Everything measured for one (target, transport) pair.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Target label.
    pub target: String,
    /// Target kind.
    pub kind: Option<TargetKind>,
    /// Transport.
    pub transport: Option<Transport>,
    /// Poll interval (interval polling), ms.
    pub poll_interval_ms: u64,
    /// Channel spread.
    pub spread: Option<Spread>,
    /// Subscribers asked for.
    pub subscribers: usize,
    /// Channels in use.
    pub channels: usize,
    /// Publish rate asked for, per second.
    pub rate: f64,
    /// Payload bytes.
    pub payload: usize,
    /// Publish phase, seconds.
    pub duration_s: f64,
    /// Publish path actually used.
    pub publish_via: Option<PublishVia>,
    /// Worker processes.
    pub workers: usize,

    /// Subscribers connected.
    pub connected: u64,
    /// Subscribers that never connected.
    pub failed: u64,
    /// Subscribers that received at least one message.
    pub served: u64,
    /// Messages published.
    pub published: u64,
    /// Failed publish attempts.
    pub publish_errors: u64,
    /// Publishes per second achieved.
    pub publish_rate: f64,
    /// Deliveries the connected subscribers should have had.
    pub expected: u64,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Published but never delivered.
    pub lost: u64,
    /// Delivered twice.
    pub duplicates: u64,
    /// Delivered after a later one.
    pub reordered: u64,
    /// Resumes the server could not honour.
    pub resume_failures: u64,
    /// Reconnects after churn.
    pub reconnects: u64,
    /// Unexpected disconnects.
    pub drops: u64,
    /// Errors by kind (subscribers and publishers).
    pub errors: BTreeMap<String, u64>,
    /// A worker's drain deadline passed before everything arrived.
    pub drain_timed_out: bool,

    /// Publish-to-receive latency, µs.
    pub latency_us: Percentiles,
    /// Connect (until subscribed) time, µs.
    pub connect_us: Percentiles,
    /// Publish round trip, µs.
    pub publish_rtt_us: Percentiles,
    /// Deliveries per second over the delivery window.
    pub deliveries_per_s: f64,

    /// Measured target processes.
    pub target_pids: Vec<u32>,
    /// Target CPU seconds over the publish window.
    pub target_cpu_s: f64,
    /// Target CPU, percent of one core, over the publish window.
    pub target_cpu_pct: f64,
    /// Target CPU per delivery, µs.
    pub cpu_us_per_delivery: f64,
    /// Target RSS before connecting, bytes.
    pub rss_before: u64,
    /// Target RSS with every subscriber connected and idle, bytes.
    pub rss_idle: u64,
    /// Target PSS before connecting, bytes.
    pub pss_before: u64,
    /// Target PSS connected and idle, bytes.
    pub pss_idle: u64,
    /// (RSS idle - before) / connected, bytes.
    pub rss_per_conn: f64,
    /// (PSS idle - before) / connected, bytes.
    pub pss_per_conn: f64,
    /// Kernel TCP memory growth / connected, bytes (both loopback ends).
    pub sock_mem_per_conn: f64,
    /// Kernel slab growth / connected, bytes (socket structures of both
    /// loopback ends and of the generator; the whole machine's).
    pub slab_per_conn: f64,
    /// Bytes the target sent on its client sockets over the publish window
    /// (from the sockets' `bytes_sent`; `wchar` when `ss` is missing).
    pub target_bytes_written: u64,
    /// Target bytes written per delivery.
    pub server_bytes_per_delivery: f64,
    /// Bytes the subscribers read per delivery.
    pub client_bytes_per_delivery: f64,

    /// Generator (parent + workers) CPU, percent of one core.
    pub generator_cpu_pct: f64,
    /// Busiest worker, percent of one core.
    pub generator_max_worker_pct: f64,
    /// Whole machine busy, percent of all cores.
    pub machine_busy_pct: f64,
    /// Whether the generator, not the target, likely limited the run.
    pub generator_bound: bool,
    /// Why, in words.
    pub bottleneck: String,
    /// Whether the target ran pinned to one CPU and the generator to the rest.
    pub pinned: bool,
    /// Redis shard rates measured after a run that published through Redis.
    pub redis: Option<crate::redisbench::RedisBench>,
}

/// A target ready to drive: addresses, PIDs, and any services we started.
pub struct Target {
    /// Label.
    pub label: String,
    /// Dialect.
    pub kind: TargetKind,
    /// Nodes.
    pub addrs: Vec<SocketAddr>,
    /// PIDs to measure.
    pub pids: Vec<u32>,
    /// Redis URL for publishing straight into Redis.
    pub redis_url: Option<String>,
    /// Extra publish header (Nchan).
    pub header: Option<String>,
    /// Gateway publish key.
    pub publish_key: Option<String>,
    /// Servers we started for it (stopped when dropped).
    pub services: Vec<Service>,
}

impl Target {
    /// Stop whatever we started.
    pub async fn stop(self) {
        for s in self.services.into_iter().rev() {
            s.stop().await;
        }
    }
}

/// Resolve (and start when asked) a target.
pub async fn resolve(spec: &TargetSpec, out: &Path) -> anyhow::Result<Target> {
    let kind = spec.kind();
    let label = spec.label();
    let mut services = Vec::new();
    let mut redis_url = spec.redis.clone().filter(|r| r != "spawn");
    if let Some(url) = &redis_url {
        if url.trim_end_matches('/').ends_with(":6379") || !url.contains("127.0.0.1") {
            bail!("refusing Redis {url}: use a private redis-server on loopback (redis=spawn), never the shared one on port 6379");
        }
    }

    let addrs: Vec<SocketAddr> = match (&spec.addr, kind) {
        (Some(addrs), _) => addrs
            .split(',')
            .map(|a| {
                a.trim()
                    .parse()
                    .with_context(|| format!("target address {a:?}"))
            })
            .collect::<anyhow::Result<_>>()?,
        (None, TargetKind::Gateway) => {
            let bin = spec
                .bin
                .as_deref()
                .context("a gateway target needs addr= or bin=")?;
            if spec.redis.as_deref() == Some("spawn") {
                let redis = services::start_redis("redis-server").await?;
                redis_url = Some(redis.redis_url());
                services.push(redis);
            }
            let log = out.join(format!("{label}.log"));
            let gw = services::start_gateway(Path::new(bin), redis_url.as_deref(), &log).await?;
            let addr = gw.addr;
            services.push(gw);
            vec![addr]
        }
        (None, TargetKind::Nchan) => {
            let store = spec.store.as_deref().unwrap_or("memory");
            let dir = out.join(format!("nchan-{store}"));
            let nchan = services::start_nchan(store, &dir).await?;
            let addr = nchan.addr;
            services.push(nchan);
            vec![addr]
        }
    };
    for addr in &addrs {
        if !is_loopback(addr.ip()) {
            bail!("target {addr} is not a loopback address; the harness drives loopback only");
        }
    }

    let started_gateway = services.iter().find(|s| s.name == "gateway").map(|s| s.pid);
    let pids = match spec.pid.or(started_gateway) {
        Some(pid) => vec![pid],
        None => {
            let mut pids = Vec::new();
            for addr in &addrs {
                pids.extend(procfs::pids_listening_on(*addr)?);
            }
            pids.sort_unstable();
            pids.dedup();
            pids
        }
    };
    Ok(Target {
        label,
        kind,
        addrs,
        pids,
        redis_url,
        header: spec.publish_header.clone(),
        publish_key: spec.publish_key.clone(),
        services,
    })
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// Source address of worker `w`: 127.0.0.(10+w) on 127.0.0.0/8, so each
/// worker has its own ephemeral port range.
fn source_ip(w: usize) -> IpAddr {
    let n = 10 + w;
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250) as u8 + 1))
}

/// A worker process and its stdin.
struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    pid: u32,
}

async fn send(stdin: &mut ChildStdin, cmd: &WorkerCommand) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(cmd)?;
    line.push('\n');
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await?;
    Ok(())
}

fn bar(len: u64, prefix: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(prefix);
    pb
}

/// Run one transport against one target.
pub async fn run_one(
    scenario: &Scenario,
    target: &Target,
    transport: Transport,
    run_id: &str,
) -> anyhow::Result<RunResult> {
    let s = scenario;
    let prefix = format!("lt-{run_id}-{}-{}", target.label, transport);
    if !clients::protocol::is_valid_channel(&format!("{prefix}:0")) {
        bail!(
            "target label {:?} makes invalid channel names",
            target.label
        );
    }
    let workers = s.worker_count();
    let label = format!("{} {}", target.label, transport);

    // Keep target and generator on separate CPUs when asked.
    let cpus = procfs::cpu_count();
    let pinned = s.pin && cpus >= 2 && {
        let generator = format!("1-{}", cpus - 1);
        let target_ok = target.pids.iter().all(|p| procfs::pin(*p, "0"));
        target_ok && procfs::pin(std::process::id(), &generator)
    };
    if s.pin && !pinned {
        eprintln!("could not pin target and generator to separate CPUs; running unpinned");
    }

    // Memory before anyone connects.
    let before = procfs::sample(&target.pids);
    let sock_before = procfs::tcp_socket_memory();
    let slab_before = procfs::slab_memory();

    // Start the workers and hand each its share.
    let (reports_tx, mut reports) = mpsc::channel::<(usize, Report)>(256);
    let exe = std::env::current_exe().context("own executable")?;
    let max_runtime_s = s.ramp_up_s + s.settle_s + s.duration_s + s.drain_s + 180.0;
    let mut procs = Vec::new();
    for w in 0..workers {
        let first = s.subscribers * w / workers;
        let last = s.subscribers * (w + 1) / workers;
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let pid = child.id().unwrap_or(0);
        if pinned {
            procfs::pin(pid, &format!("1-{}", cpus - 1));
        }
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let assignment = Assignment {
            worker: w,
            scenario: s.clone(),
            transport,
            kind: target.kind,
            addrs: target.addrs.clone(),
            prefix: prefix.clone(),
            first,
            last,
            source: source_ip(w),
            max_runtime_s,
        };
        let mut line = serde_json::to_string(&assignment)?;
        line.push('\n');
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;

        let tx = reports_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(report) = serde_json::from_str::<Report>(&line) {
                    if tx.send((w, report)).await.is_err() {
                        return;
                    }
                }
            }
        });
        procs.push(WorkerProc { child, stdin, pid });
    }
    drop(reports_tx);

    // Connect phase.
    let pb = bar(s.subscribers as u64, format!("{label} connect"));
    let mut latest: Vec<Progress> = vec![Progress::default(); workers];
    let mut ready = vec![false; workers];
    let connect_limit = Duration::from_secs_f64(s.ramp_up_s + 60.0 + s.subscribers as f64 / 500.0);
    let connect_deadline = tokio::time::Instant::now() + connect_limit;
    while ready.iter().any(|r| !r) {
        let next = tokio::time::timeout_at(connect_deadline, reports.recv()).await;
        let Ok(Some((w, report))) = next else {
            pb.abandon();
            bail!("{label}: workers did not finish connecting within {connect_limit:?}");
        };
        match report {
            Report::Progress(p) => latest[w] = p,
            Report::Ready(p) => {
                latest[w] = p;
                ready[w] = true;
            }
            Report::Final(_) | Report::Drained(_) => {}
        }
        let connected: u64 = latest.iter().map(|p| p.connected).sum();
        let failed: u64 = latest.iter().map(|p| p.failed).sum();
        pb.set_position(connected);
        pb.set_message(format!("failed {failed}"));
    }
    pb.finish();

    // Idle memory with everyone connected.
    tokio::time::sleep(Duration::from_secs_f64(s.settle_s)).await;
    let idle = procfs::sample(&target.pids);
    let sock_idle = procfs::tcp_socket_memory();
    let slab_idle = procfs::slab_memory();

    // Publish phase, with CPU sampled around it.
    let gen_pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
    let worker_cpu0: Vec<f64> = gen_pids
        .iter()
        .map(|p| procfs::sample(&[*p]).cpu_s)
        .collect();
    let self_cpu0 = procfs::sample(&[std::process::id()]).cpu_s;
    let target0 = procfs::sample(&target.pids);
    let ports: Vec<u16> = target.addrs.iter().map(|a| a.port()).collect();
    let sent0 = procfs::socket_bytes_sent(&ports);
    let machine0 = procfs::machine_ticks();
    let window_start = Instant::now();
    let publish_start_us = payload::now_us();
    for p in procs.iter_mut() {
        send(&mut p.stdin, &WorkerCommand::Go).await?;
    }

    let via = if target.kind == TargetKind::Nchan {
        PublishVia::Http
    } else {
        s.publish_via
    };
    let plan = PublishPlan {
        kind: target.kind,
        addr: target.addrs[0],
        via,
        redis_url: target.redis_url.clone(),
        header: target.header.clone(),
        publish_key: target.publish_key.clone(),
        prefix: prefix.clone(),
        scenario: s.clone(),
    };
    let published = Arc::new(AtomicU64::new(0));
    let mut publishing = tokio::spawn(publisher::run(plan, published.clone()));
    let pb = bar((s.duration_s * 1000.0) as u64, format!("{label} publish"));
    let outcome = loop {
        tokio::select! {
            r = &mut publishing => break r.context("publisher")??,
            Some((w, report)) = reports.recv() => {
                if let Report::Progress(p) = report { latest[w] = p; }
                let received: u64 = latest.iter().map(|p| p.unique).sum();
                let secs = window_start.elapsed().as_secs_f64().max(1e-3);
                pb.set_position(window_start.elapsed().as_millis() as u64);
                pb.set_message(format!(
                    "published {} delivered {} ({:.0}/s)",
                    published.load(std::sync::atomic::Ordering::Relaxed),
                    received,
                    received as f64 / secs
                ));
            }
        }
    };
    pb.finish();

    // Tell workers what to expect; collect their finals.
    let finish = WorkerCommand::Finish {
        expected: outcome.last_seq.clone(),
        drain_s: s.drain_s,
    };
    for p in procs.iter_mut() {
        send(&mut p.stdin, &finish).await?;
    }
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs_f64(s.drain_s + 20.0);
    let mut drained = vec![false; workers];
    while drained.iter().any(|d| !d) {
        match tokio::time::timeout_at(drain_deadline, reports.recv()).await {
            Ok(Some((w, Report::Drained(_)))) => drained[w] = true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }

    // The measuring window ends here, with every connection still open.
    let window = window_start.elapsed().as_secs_f64().max(1e-3);
    let target1 = procfs::sample(&target.pids);
    let sent1 = procfs::socket_bytes_sent(&ports);
    let machine1 = procfs::machine_ticks();
    let self_cpu1 = procfs::sample(&[std::process::id()]).cpu_s;
    let worker_cpu1: Vec<Option<f64>> = gen_pids
        .iter()
        .map(|p| Some(procfs::sample(&[*p]).cpu_s))
        .collect();

    for p in procs.iter_mut() {
        let _ = send(&mut p.stdin, &WorkerCommand::Close).await;
    }
    let mut finals: Vec<Option<Final>> = vec![None; workers];
    let final_deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while finals.iter().any(Option::is_none) {
        match tokio::time::timeout_at(final_deadline, reports.recv()).await {
            Ok(Some((w, Report::Final(f)))) => finals[w] = Some(*f),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    for mut p in procs {
        drop(p.stdin);
        if tokio::time::timeout(Duration::from_secs(5), p.child.wait())
            .await
            .is_err()
        {
            let _ = p.child.start_kill();
        }
    }
    let missing = finals.iter().filter(|f| f.is_none()).count();
    if missing > 0 {
        bail!("{label}: {missing} worker(s) sent no final report");
    }
    let finals: Vec<Final> = finals.into_iter().flatten().collect();

    // Combine.
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut connect = latency.clone();
    let mut r = RunResult {
        scenario: s.name.clone(),
        target: target.label.clone(),
        kind: Some(target.kind),
        transport: Some(transport),
        poll_interval_ms: s.poll_interval_ms,
        spread: Some(s.spread),
        subscribers: s.subscribers,
        channels: s.channel_count(),
        rate: s.rate,
        payload: s.payload,
        duration_s: s.duration_s,
        publish_via: Some(via),
        workers,
        published: outcome.published,
        publish_errors: outcome.errors.values().sum(),
        publish_rate: outcome.published as f64 / outcome.elapsed.as_secs_f64().max(1e-3),
        publish_rtt_us: Percentiles::of(&outcome.latency),
        target_pids: target.pids.clone(),
        pinned,
        ..RunResult::default()
    };
    for (k, v) in &outcome.errors {
        *r.errors.entry(format!("publish: {k}")).or_default() += v;
    }
    let mut bytes_read = 0;
    let mut last_receipt = 0;
    for f in &finals {
        r.connected += f.progress.connected;
        r.failed += f.progress.failed;
        r.served += f.served;
        r.reconnects += f.progress.reconnects;
        r.drops += f.progress.drops;
        r.expected += f.expected;
        r.delivered += f.tally.unique;
        r.lost += f.tally.lost;
        r.duplicates += f.tally.duplicates;
        r.reordered += f.tally.reordered;
        r.resume_failures += f.resume_failures;
        r.drain_timed_out |= f.drain_timed_out;
        bytes_read += f.bytes_read;
        last_receipt = last_receipt.max(f.last_receipt_us);
        for (k, v) in &f.errors {
            *r.errors.entry(k.clone()).or_default() += v;
        }
        if let Ok(h) = worker::histogram_from_hex(&f.latency) {
            let _ = latency.add(&h);
        }
        if let Ok(h) = worker::histogram_from_hex(&f.connect) {
            let _ = connect.add(&h);
        }
    }
    r.latency_us = Percentiles::of(&latency);
    r.connect_us = Percentiles::of(&connect);

    let delivery_window = if last_receipt > publish_start_us {
        (last_receipt - publish_start_us) as f64 / 1e6
    } else {
        window
    };
    r.deliveries_per_s = r.delivered as f64 / delivery_window.max(1e-3);
    let delivered = r.delivered.max(1) as f64;
    let conns = r.connected.max(1) as f64;

    r.rss_before = before.rss;
    r.rss_idle = idle.rss;
    r.pss_before = before.pss;
    r.pss_idle = idle.pss;
    r.rss_per_conn = idle.rss.saturating_sub(before.rss) as f64 / conns;
    r.pss_per_conn = idle.pss.saturating_sub(before.pss) as f64 / conns;
    r.sock_mem_per_conn = sock_idle.saturating_sub(sock_before) as f64 / conns;
    r.slab_per_conn = slab_idle.saturating_sub(slab_before) as f64 / conns;

    r.target_cpu_s = (target1.cpu_s - target0.cpu_s).max(0.0);
    r.target_cpu_pct = 100.0 * r.target_cpu_s / window;
    r.cpu_us_per_delivery = 1e6 * r.target_cpu_s / delivered;
    r.target_bytes_written = match (sent0, sent1) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => target1.wchar.saturating_sub(target0.wchar),
    };
    r.server_bytes_per_delivery = r.target_bytes_written as f64 / delivered;
    r.client_bytes_per_delivery = bytes_read as f64 / delivered;

    let mut gen_cpu = (self_cpu1 - self_cpu0).max(0.0);
    let mut max_worker: f64 = 0.0;
    for (w, c0) in worker_cpu0.iter().enumerate() {
        let used = worker_cpu1[w].map(|c1| (c1 - c0).max(0.0)).unwrap_or(0.0);
        gen_cpu += used;
        max_worker = max_worker.max(used);
    }
    r.generator_cpu_pct = 100.0 * gen_cpu / window;
    r.generator_max_worker_pct = 100.0 * max_worker / window;
    let busy = machine1.0.saturating_sub(machine0.0) as f64;
    let total = machine1.1.saturating_sub(machine0.1).max(1) as f64;
    r.machine_busy_pct = 100.0 * busy / total;
    judge_bottleneck(&mut r);

    if via == PublishVia::Redis {
        if let Some(url) = &target.redis_url {
            match crate::redisbench::measure(url, s.payload).await {
                Ok(bench) => r.redis = Some(bench),
                Err(e) => {
                    *r.errors.entry(format!("redis bench: {e:#}")).or_default() += 1;
                }
            }
        }
    }
    Ok(r)
}

/// Say whether the generator rather than the target limited the run.
fn judge_bottleneck(r: &mut RunResult) {
    let cores = procfs::cpu_count() as f64;
    let saturated = r.machine_busy_pct >= 90.0;
    let others = (r.machine_busy_pct * cores - r.generator_cpu_pct - r.target_cpu_pct).max(0.0);
    let noise = if others >= 30.0 {
        format!(" (other processes used {others:.0}% of a core: figures are noisy)")
    } else {
        String::new()
    };
    if r.pinned {
        // Each side has its own CPUs: judge each against its own.
        let generator_cores = (cores - 1.0).max(1.0);
        let generator_full = r.generator_cpu_pct >= 90.0 * generator_cores;
        let target_full = r.target_cpu_pct >= 90.0;
        r.generator_bound = generator_full && !target_full;
        r.bottleneck = match (target_full, generator_full) {
            (true, true) => format!(
                "both: target {:.0}% of its one CPU, generator {:.0}% of its {generator_cores:.0}",
                r.target_cpu_pct, r.generator_cpu_pct
            ),
            (true, false) => format!("target: {:.0}% of its one CPU", r.target_cpu_pct),
            (false, true) => format!(
                "generator: {:.0}% of its {generator_cores:.0} CPU(s), target {:.0}% of its one",
                r.generator_cpu_pct, r.target_cpu_pct
            ),
            (false, false) => format!(
                "neither: target {:.0}% of its one CPU; the offered load set the rate",
                r.target_cpu_pct
            ),
        };
    } else if r.generator_max_worker_pct >= 90.0 {
        r.generator_bound = true;
        r.bottleneck = format!(
            "generator: a worker used {:.0}% of its core (workers are single-threaded); add workers",
            r.generator_max_worker_pct
        );
    } else if saturated
        && r.generator_cpu_pct >= 50.0
        && r.generator_cpu_pct >= 0.5 * r.target_cpu_pct
    {
        // The target got only what the generator left of the machine.
        r.generator_bound = true;
        r.bottleneck = format!(
            "generator: machine {:.0}% busy; the generator used {:.0}% and the target {:.0}% of a core, so the target's throughput is bounded by the CPU left to it (a lower bound)",
            r.machine_busy_pct, r.generator_cpu_pct, r.target_cpu_pct
        );
    } else if saturated {
        r.bottleneck = format!(
            "target: machine {:.0}% busy, target {:.0}% of a core (of {cores:.0})",
            r.machine_busy_pct, r.target_cpu_pct
        );
    } else {
        r.bottleneck = format!(
            "neither: machine {:.0}% busy; the offered load, not CPU, set the rate",
            r.machine_busy_pct
        );
    }
    r.bottleneck.push_str(&noise);
    if r.pinned {
        r.bottleneck = format!(
            "pinned (target on CPU 0, generator on the rest); {}",
            r.bottleneck
        );
    }
}

/// Run the scenario against every target and transport; results in order.
pub async fn run_all(scenario: &Scenario, out: &Path) -> anyhow::Result<Vec<RunResult>> {
    scenario.validate()?;
    if scenario.targets.is_empty() {
        bail!("name at least one target (--target or [[targets]] in the scenario)");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let limit = procfs::raise_nofile_limit();
    tracing::debug!(limit, "open-file limit");
    let run_id = format!("{:x}", payload::now_us() % 0xff_ffff);

    let mut results = Vec::new();
    for spec in &scenario.targets {
        // A target the harness starts is started afresh for every transport,
        // so each idle-memory reading starts from a cold process.
        let fresh = spec.addr.is_none();
        let mut shared = None;
        for &transport in &scenario.transports {
            if shared.is_none() {
                let target = resolve(spec, out).await?;
                eprintln!(
                    "target {} at {:?}, measuring pids {:?}",
                    target.label, target.addrs, target.pids
                );
                shared = Some(target);
            }
            let Some(target) = shared.as_ref() else {
                continue;
            };
            match run_one(scenario, target, transport, &run_id).await {
                Ok(r) => results.push(r),
                Err(e) => {
                    eprintln!("run {} {transport} failed: {e:#}", target.label);
                    results.push(RunResult {
                        scenario: scenario.name.clone(),
                        target: target.label.clone(),
                        kind: Some(target.kind),
                        transport: Some(transport),
                        subscribers: scenario.subscribers,
                        errors: BTreeMap::from([(format!("run failed: {e:#}"), 1)]),
                        failed: scenario.subscribers as u64,
                        ..RunResult::default()
                    });
                }
            }
            if fresh {
                if let Some(target) = shared.take() {
                    target.stop().await;
                }
            }
            // Let the target close the last run's sockets before the next.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if let Some(target) = shared.take() {
            target.stop().await;
        }
    }
    Ok(results)
}

/// The final table printed after a run.
pub fn table(results: &[RunResult]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<16} {:<9} {:>6} {:>7} {:>10} {:>10} {:>5} {:>4} {:>4} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7} {:>7} {:>6}\n",
        "target", "transport", "subs", "pub/s", "delivered", "deliv/s", "lost", "dup", "ooo",
        "p50 ms", "p99 ms", "max ms", "cpu %", "µs/deliv", "B/conn", "B/deliv", "gen %"
    ));
    for r in results {
        let transport = r.transport.map(|t| t.name()).unwrap_or("?");
        out.push_str(&format!(
            "{:<16} {:<9} {:>6} {:>7.0} {:>10} {:>10.0} {:>5} {:>4} {:>4} {:>8.2} {:>8.2} {:>8.1} {:>7.0} {:>8.2} {:>7.0} {:>7.0} {:>6.0}{}\n",
            r.target,
            transport,
            r.connected,
            r.publish_rate,
            r.delivered,
            r.deliveries_per_s,
            r.lost,
            r.duplicates,
            r.reordered,
            r.latency_us.p50 as f64 / 1000.0,
            r.latency_us.p99 as f64 / 1000.0,
            r.latency_us.max as f64 / 1000.0,
            r.target_cpu_pct,
            r.cpu_us_per_delivery,
            r.rss_per_conn,
            r.server_bytes_per_delivery,
            r.generator_cpu_pct,
            if r.generator_bound { "  generator-bound" } else { "" },
        ));
    }
    out
}

/// Where a run writes by default: `loadtest/out/<name>-<time>`.
pub fn default_out(name: &str) -> PathBuf {
    let secs = payload::now_us() / 1_000_000;
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("out")
        .join(format!("{name}-{secs}"))
}
