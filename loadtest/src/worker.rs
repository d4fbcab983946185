//! The `loadtest worker` process: holds up to ~15k subscriber connections
//! on one thread, from one source address of 127.0.0.0/8, and talks to the
//! parent over its standard streams, one JSON line per message: it reads an
//! [`Assignment`] and then [`Command`]s on stdin, and writes [`Report`]s on
//! stdout (progress, ready, final with serialized HDR histograms). Every wait
//! is bounded: a worker exits by itself at `max_runtime_s`, and when its
//! parent goes away (stdin closes).

use std::{
    cell::RefCell,
    collections::BTreeMap,
    io::Write,
    net::{IpAddr, SocketAddr},
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::{
    serialization::{Deserializer, Serializer, V2Serializer},
    Histogram,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::{mpsc, Notify, Semaphore},
};
use tokio_util::sync::CancellationToken;

use crate::{
    procfs,
    scenario::{Scenario, TargetKind, Transport},
    subscriber::{Ctx, Shared, SubConfig, Subscriber},
    track::Tally,
};

/// How often a worker reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Longest wait for subscriber tasks to wind up once cancelled.
const WIND_UP: Duration = Duration::from_secs(5);

/// What the parent tells a worker to do, once, first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Assignment {
    /// Worker number (0-based).
    pub worker: usize,
    /// The scenario (channel spread, timing, churn).
    pub scenario: Scenario,
    /// Transport of this run.
    pub transport: Transport,
    /// Dialect of the target.
    pub kind: TargetKind,
    /// Target nodes.
    pub addrs: Vec<SocketAddr>,
    /// Channel name prefix of this run.
    pub prefix: String,
    /// First subscriber index (inclusive) this worker runs.
    pub first: usize,
    /// Last subscriber index (exclusive).
    pub last: usize,
    /// Source address for client sockets.
    pub source: IpAddr,
    /// Hard stop: the worker exits after this many seconds whatever happens.
    pub max_runtime_s: f64,
}

/// Later instructions from the parent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Publishing has started: start churn.
    Go,
    /// Publishing stopped; `expected[ch]` is the last sequence published on
    /// channel `ch`. Wait up to `drain_s` for the rest, then report and exit.
    Finish {
        /// Last sequence per channel index.
        expected: Vec<u64>,
        /// Longest wait for in-flight messages, seconds.
        drain_s: f64,
    },
    /// Measuring is done: close every connection, report and exit.
    Close,
}

/// Live counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Subscribers connected at least once.
    pub connected: u64,
    /// Subscribers that gave up connecting.
    pub failed: u64,
    /// Subscribers open right now.
    pub open: u64,
    /// All receipts.
    pub received: u64,
    /// Distinct receipts.
    pub unique: u64,
    /// Reconnects after churn.
    pub reconnects: u64,
    /// Unexpected disconnects.
    pub drops: u64,
}

/// Everything a worker measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Final {
    /// Last counters.
    pub progress: Progress,
    /// Exact accounting summed over subscribers.
    pub tally: Tally,
    /// Messages the connected subscribers should have received.
    pub expected: u64,
    /// Resumes the server could not honour.
    pub resume_failures: u64,
    /// Bytes read from sockets since publishing started.
    pub bytes_read: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Publish-to-receive latency histogram (µs), V2-serialized, hex.
    pub latency: String,
    /// Connect-time histogram (µs), V2-serialized, hex.
    pub connect: String,
    /// Unix µs of the first receipt.
    pub first_receipt_us: u64,
    /// Unix µs of the last receipt.
    pub last_receipt_us: u64,
    /// Whether the drain deadline passed before everything arrived.
    pub drain_timed_out: bool,
    /// Subscribers that received at least one message.
    pub served: u64,
}

/// One line from a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Report {
    /// Periodic counters.
    Progress(Progress),
    /// Every subscriber has connected or given up.
    Ready(Progress),
    /// Everything expected arrived (or the drain deadline passed); the
    /// connections stay open until `Close`, so the parent can read the
    /// target's socket counters.
    Drained(Progress),
    /// The end.
    Final(Box<Final>),
}

/// Serialize a histogram as hex (V2 format).
pub fn histogram_to_hex(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    if V2Serializer::new().serialize(h, &mut bytes).is_err() {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Read back a histogram written by [`histogram_to_hex`].
pub fn histogram_from_hex(hex: &str) -> anyhow::Result<Histogram<u64>> {
    anyhow::ensure!(hex.len().is_multiple_of(2), "odd hex length");
    let bytes: Result<Vec<u8>, _> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect();
    let bytes = bytes.context("bad hex")?;
    let h = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
    Ok(h)
}

/// Entry point of `loadtest worker`.
pub fn main() -> anyhow::Result<()> {
    procfs::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run())
}

fn emit(report: &Report) {
    if let Ok(line) = serde_json::to_string(report) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn progress(shared: &Shared) -> Progress {
    Progress {
        connected: shared.connected,
        failed: shared.failed,
        open: shared.open,
        received: shared.received,
        unique: shared.unique,
        reconnects: shared.reconnects,
        drops: shared.drops,
    }
}

async fn run() -> anyhow::Result<()> {
    // Read the assignment, then forward later commands.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("no assignment within 30 s")??
        .context("stdin closed before the assignment")?;
    let a: Assignment = serde_json::from_str(&first).context("bad assignment")?;
    let deadline = Instant::now() + Duration::from_secs_f64(a.max_runtime_s);

    let (commands_tx, mut commands) = mpsc::channel::<Option<Command>>(4);
    tokio::task::spawn_local(async move {
        loop {
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                _ => {
                    let _ = commands_tx.send(None).await;
                    return;
                }
            };
            if let Ok(cmd) = serde_json::from_str::<Command>(&line) {
                if commands_tx.send(Some(cmd)).await.is_err() {
                    return;
                }
            }
        }
    });

    // Shared context for this worker's subscribers.
    let count = a.last.saturating_sub(a.first);
    let s = &a.scenario;
    let ctx = Rc::new(Ctx {
        cfg: SubConfig {
            transport: a.transport,
            kind: a.kind,
            addrs: a.addrs.clone(),
            prefix: a.prefix.clone(),
            source: Some(a.source),
            poll_interval: Duration::from_millis(s.poll_interval_ms.max(1)),
            longpoll_timeout_s: s.longpoll_timeout_s,
            churn_reconnect: Duration::from_millis(s.churn.reconnect_ms),
            nchan_ws_meta: a.kind == TargetKind::Nchan && s.churn.active(),
        },
        shared: RefCell::new(Shared::new()),
        cancel: CancellationToken::new(),
        churn: (0..count).map(|_| Notify::new()).collect(),
        connect_gate: Semaphore::new(s.connect_concurrency.max(1)),
        expected: RefCell::new(None),
        connected_flags: RefCell::new(vec![false; count]),
    });
    let channels: Vec<Vec<u32>> = (a.first..a.last).map(|i| s.channels_of(i)).collect();

    // Start subscribers, paced over the ramp-up (this worker's share).
    let ramp = Duration::from_secs_f64(s.ramp_up_s.max(0.0));
    let spacing = if count > 0 {
        ramp / count as u32
    } else {
        Duration::ZERO
    };
    let ramp_ctx = ctx.clone();
    let ramp_channels = channels.clone();
    let first_index = a.first;
    let spawner = tokio::task::spawn_local(async move {
        let start = tokio::time::Instant::now();
        let mut handles = Vec::with_capacity(count);
        for (local, chans) in ramp_channels.into_iter().enumerate() {
            let at = start + spacing * local as u32;
            tokio::select! {
                _ = ramp_ctx.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(at) => {}
            }
            let sub = Subscriber::new(first_index + local, local, chans);
            handles.push(tokio::task::spawn_local(sub.run(ramp_ctx.clone())));
        }
        handles
    });

    // Report progress until every subscriber connected or failed.
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    loop {
        ticker.tick().await;
        if Instant::now() > deadline {
            anyhow::bail!(
                "worker {} passed its run-time limit while connecting",
                a.worker
            );
        }
        let p = progress(&ctx.shared.borrow());
        if p.connected + p.failed >= count as u64 {
            emit(&Report::Ready(p));
            break;
        }
        emit(&Report::Progress(p));
    }
    let handles = spawner.await.unwrap_or_default();

    // Wait for Go (start churn) and Finish.
    let mut churn_task = None;
    let mut bytes_at_go = 0;
    let (expected, drain_s) = loop {
        tokio::select! {
            _ = ticker.tick() => {
                emit(&Report::Progress(progress(&ctx.shared.borrow())));
                if Instant::now() > deadline {
                    ctx.cancel.cancel();
                    anyhow::bail!("worker {} passed its run-time limit", a.worker);
                }
            }
            cmd = commands.recv() => match cmd.flatten() {
                Some(Command::Go) => {
                    bytes_at_go = ctx.shared.borrow().bytes_read;
                    churn_task = Some(tokio::task::spawn_local(churn(ctx.clone(), a.clone())));
                }
                Some(Command::Finish { expected, drain_s }) => break (expected, drain_s),
                Some(Command::Close) => {}
                None => {
                    // The parent went away: stop.
                    ctx.cancel.cancel();
                    anyhow::bail!("parent closed stdin");
                }
            }
        }
    };
    if let Some(task) = churn_task {
        task.abort();
    }

    // Wait until the connected subscribers hold every expected message.
    let want: u64 = {
        let flags = ctx.connected_flags.borrow();
        channels
            .iter()
            .zip(flags.iter())
            .filter(|(_, connected)| **connected)
            .map(|(chans, _)| {
                chans
                    .iter()
                    .map(|&ch| expected.get(ch as usize).copied().unwrap_or(0))
                    .sum::<u64>()
            })
            .sum()
    };
    *ctx.expected.borrow_mut() = Some(expected);
    let drain_deadline = Instant::now() + Duration::from_secs_f64(drain_s.max(0.0));
    let mut drain_timed_out = false;
    loop {
        if ctx.shared.borrow().unique >= want {
            break;
        }
        if Instant::now() > drain_deadline || Instant::now() > deadline {
            drain_timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Hold the connections until the parent has measured.
    emit(&Report::Drained(progress(&ctx.shared.borrow())));
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, commands.recv()).await {
            Ok(Some(Some(Command::Close))) | Ok(Some(None)) | Ok(None) | Err(_) => break,
            Ok(Some(Some(_))) => {}
        }
    }

    // Stop everyone and collect exact loss.
    ctx.cancel.cancel();
    let mut lost = 0;
    let mut served = 0;
    let wind_up = tokio::time::Instant::now() + WIND_UP;
    for handle in handles {
        if let Ok(Ok((l, any))) = tokio::time::timeout_at(wind_up, handle).await {
            lost += l;
            served += u64::from(any);
        }
    }

    let shared = ctx.shared.borrow();
    let mut tally = shared.tally.clone();
    tally.lost = lost;
    emit(&Report::Final(Box::new(Final {
        progress: progress(&shared),
        tally,
        expected: want,
        resume_failures: shared.resume_failures,
        bytes_read: shared.bytes_read.saturating_sub(bytes_at_go),
        errors: shared.errors.clone(),
        latency: histogram_to_hex(&shared.latency),
        connect: histogram_to_hex(&shared.connect),
        first_receipt_us: shared.first_receipt_us,
        last_receipt_us: shared.last_receipt_us,
        drain_timed_out,
        served,
    })));
    Ok(())
}

/// Drop random subscribers at the churn rate (this worker's share), and all
/// of a storm's share at its moment; runs until aborted.
async fn churn(ctx: Rc<Ctx>, a: Assignment) {
    let s = &a.scenario;
    let count = ctx.churn.len();
    if count == 0 {
        return;
    }
    let total = s.subscribers.max(1) as f64;
    let share = count as f64 / total;
    let rate = s.churn.rate * share;
    let start = tokio::time::Instant::now();
    let storm_at = s
        .churn
        .storm_at_s
        .map(|at| start + Duration::from_secs_f64(at.max(0.0)));
    let mut storm_done = storm_at.is_none();
    let period = if rate > 0.0 {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        Duration::from_secs(3600)
    };
    let mut next = start + period;

    loop {
        let wake = match storm_at {
            Some(at) if !storm_done => next.min(at),
            _ => next,
        };
        tokio::time::sleep_until(wake).await;
        let now = tokio::time::Instant::now();
        if let Some(at) = storm_at {
            if !storm_done && now >= at {
                storm_done = true;
                let n = (count as f64 * s.churn.storm_fraction.clamp(0.0, 1.0)) as usize;
                let mut picks: Vec<usize> = (0..count).collect();
                fastrand::shuffle(&mut picks);
                for i in picks.into_iter().take(n) {
                    ctx.churn[i].notify_one();
                }
            }
        }
        if now >= next && rate > 0.0 {
            ctx.churn[fastrand::usize(0..count)].notify_one();
            next += period;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_through_hex() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for v in [1, 10, 100, 1000, 123_456] {
            h.record(v).unwrap();
        }
        let back = histogram_from_hex(&histogram_to_hex(&h)).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
    }
}
