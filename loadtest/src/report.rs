//! The report: `results.json` (raw results, re-readable by `loadtest
//! report`), `report.json` (results, verdicts and capacity plan),
//! `report.md` (tables people read) and `charts/*.svg`.

use std::{fmt::Write as _, path::Path, path::PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{
    capacity::{self, CapacityInputs, CapacityPlan},
    charts, procfs,
    run::RunResult,
    scenario::{Spread, TargetKind, Transport},
};

/// Save raw results to `out/results.json`.
pub fn save_results(out: &Path, results: &[RunResult]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(results)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Read results from folders (their `results.json`) or files.
pub fn load_results(inputs: &[PathBuf]) -> anyhow::Result<Vec<RunResult>> {
    let mut all = Vec::new();
    for input in inputs {
        let path = if input.is_dir() {
            input.join("results.json")
        } else {
            input.clone()
        };
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let results: Vec<RunResult> =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
        all.extend(results);
    }
    Ok(all)
}

/// One verdict row: how a transport did on a target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verdict {
    /// Scenario.
    pub scenario: String,
    /// Target label.
    pub target: String,
    /// Transport.
    pub transport: String,
    /// Delivered everything exactly once and in order.
    pub exact: bool,
    /// p99 latency, ms.
    pub p99_ms: f64,
    /// Deliveries per CPU-second of the target.
    pub deliveries_per_core_s: f64,
    /// KiB per idle connection (PSS).
    pub kib_per_conn: f64,
    /// Bytes written per delivery.
    pub bytes_per_delivery: f64,
    /// The verdict in words.
    pub verdict: String,
}

/// A gateway-against-Nchan comparison for one transport.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    /// Scenario.
    pub scenario: String,
    /// Transport.
    pub transport: String,
    /// Gateway label.
    pub gateway: String,
    /// Peer label.
    pub peer: String,
    /// Gateway KiB per connection over the peer's.
    pub memory_ratio: f64,
    /// Gateway deliveries per core-second over the peer's.
    pub efficiency_ratio: f64,
    /// Gateway p99 over the peer's.
    pub p99_ratio: f64,
}

/// One performance goal of the issue, with the figure measured for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Goal {
    /// The goal in words.
    pub goal: String,
    /// What was measured, in words.
    pub measured: String,
    /// Met, missed, or `None` when no run measured it.
    pub met: Option<bool>,
}

fn goal(goal: &str, measured: String, met: Option<bool>) -> Goal {
    Goal {
        goal: goal.into(),
        measured,
        met,
    }
}

fn gateway(r: &RunResult) -> bool {
    r.kind == Some(TargetKind::Gateway) && r.delivered > 0
}

/// The performance goals, checked against whatever runs measured
/// them (goals no run measured say so).
pub fn goals(results: &[RunResult]) -> Vec<Goal> {
    let mut out = Vec::new();
    let nchan_mem = |t: Transport, scenario: &str| {
        results
            .iter()
            .filter(|r| r.kind == Some(TargetKind::Nchan) && r.transport == Some(t))
            .filter(|r| r.scenario == scenario && r.connected >= 14_000)
            .map(|r| r.pss_per_conn)
            .next()
    };

    // Idle memory per connection at ~15k connections.
    for (t, limit) in [
        (Transport::Ws, 4096.0),
        (Transport::Sse, 3072.0),
        (Transport::Longpoll, 3072.0),
    ] {
        // Prefer a run with Nchan beside it in the same scenario.
        let candidates: Vec<&RunResult> = results
            .iter()
            .filter(|r| gateway(r) && r.transport == Some(t) && r.connected >= 14_000)
            .collect();
        let paired: Vec<&RunResult> = candidates
            .iter()
            .copied()
            .filter(|r| nchan_mem(t, &r.scenario).is_some())
            .collect();
        let pool = if paired.is_empty() {
            candidates
        } else {
            paired
        };
        let run = pool
            .into_iter()
            .min_by(|a, b| a.pss_per_conn.total_cmp(&b.pss_per_conn));
        let text = format!(
            "gateway {t} RSS per idle connection at 15k ≤ {:.0} KiB and ≤ half of Nchan's",
            limit / 1024.0
        );
        match run {
            Some(r) => {
                let peer = nchan_mem(t, &r.scenario);
                let half = peer.map(|p| r.pss_per_conn <= p / 2.0);
                let measured = match peer {
                    Some(p) => format!(
                        "{:.2} KiB at {} (Nchan {:.2} KiB)",
                        r.pss_per_conn / 1024.0,
                        r.connected,
                        p / 1024.0
                    ),
                    None => format!(
                        "{:.2} KiB at {} (no Nchan run)",
                        r.pss_per_conn / 1024.0,
                        r.connected
                    ),
                };
                let met = r.pss_per_conn <= limit && half.unwrap_or(true);
                out.push(goal(&text, measured, Some(met)));
            }
            None => out.push(goal(
                &text,
                "not measured (no run with ≥14k connections)".into(),
                None,
            )),
        }
    }

    // Broadcast throughput to 10k WebSocket subscribers.
    let text = "broadcast to 10k WebSocket subscribers ≥ 1,000,000 deliveries/s and ≥ 2× Nchan";
    let best = results
        .iter()
        .filter(|r| gateway(r) && r.transport == Some(Transport::Ws))
        .filter(|r| r.spread == Some(Spread::Broadcast) && r.connected >= 9_000)
        .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
    match best {
        Some(r) => {
            let peer = results
                .iter()
                .filter(|p| p.kind == Some(TargetKind::Nchan) && p.scenario == r.scenario)
                .filter(|p| p.transport == Some(Transport::Ws))
                .map(|p| p.deliveries_per_s)
                .next();
            let versus = peer
                .map(|p| format!(", Nchan {p:.0}/s ({:.2}×)", r.deliveries_per_s / p.max(1.0)))
                .unwrap_or_default();
            let bound = if r.generator_bound {
                "; generator-bound"
            } else {
                ""
            };
            let measured = format!(
                "{:.0}/s at {} subscribers{versus}{bound}",
                r.deliveries_per_s, r.connected
            );
            let met =
                r.deliveries_per_s >= 1e6 && peer.is_none_or(|p| r.deliveries_per_s >= 2.0 * p);
            out.push(goal(text, measured, Some(met)));
        }
        None => out.push(goal(text, "not measured".into(), None)),
    }

    // p99 latency near 200k deliveries/s.
    for (t, limit_ms) in [
        (Transport::Ws, 5.0),
        (Transport::Sse, 5.0),
        (Transport::Longpoll, 10.0),
    ] {
        let text = format!("p99 publish-to-receive ≤ {limit_ms} ms at 200k deliveries/s, {t}");
        let run = results
            .iter()
            .filter(|r| gateway(r) && r.transport == Some(t) && r.deliveries_per_s >= 150_000.0)
            .min_by(|a, b| {
                (a.deliveries_per_s - 200_000.0)
                    .abs()
                    .total_cmp(&(b.deliveries_per_s - 200_000.0).abs())
            });
        match run {
            Some(r) => {
                let p99 = r.latency_us.p99 as f64 / 1000.0;
                out.push(goal(
                    &text,
                    format!("{p99:.2} ms at {:.0} deliveries/s", r.deliveries_per_s),
                    Some(p99 <= limit_ms),
                ));
            }
            None => out.push(goal(
                &text,
                "not measured (no run reached 150k/s)".into(),
                None,
            )),
        }
    }

    // Connections one process serves.
    let text = "one gateway process serves ≥ 19k connections, every one delivered to";
    let most = results
        .iter()
        .filter(|r| gateway(r) && exact(r))
        .max_by_key(|r| r.connected);
    match most {
        Some(r) => out.push(goal(
            text,
            format!(
                "{} connections, {} of them received messages, all exact ({} deliveries)",
                r.connected, r.served, r.delivered
            ),
            Some(r.connected >= 19_000 && r.served == r.connected),
        )),
        None => out.push(goal(text, "not measured".into(), None)),
    }

    // Redis publish path.
    let text = "publishing with history through Redis ≥ half of raw PUBLISH (redis-benchmark)";
    match results.iter().find_map(|r| r.redis.as_ref()) {
        Some(b) => out.push(goal(
            text,
            format!(
                "gw_publish {:.0}/s vs PUBLISH {:.0}/s ({:.2})",
                b.gw_publish_per_s,
                b.raw_publish_per_s,
                b.gw_publish_per_s / b.raw_publish_per_s.max(1.0)
            ),
            Some(b.gw_publish_per_s >= b.raw_publish_per_s / 2.0),
        )),
        None => out.push(goal(text, "not measured".into(), None)),
    }

    // Cost per delivery flat from 1k to 15k.
    let text = "gateway CPU per delivery flat within 20% from 1k to 15k subscribers";
    let mut series: Vec<(&str, Transport)> = results
        .iter()
        .filter(|r| gateway(r))
        .filter_map(|r| Some((r.scenario.as_str(), r.transport?)))
        .collect();
    series.sort();
    series.dedup();
    let mut found = None;
    for (scenario, t) in series {
        let costs: Vec<(u64, f64)> = results
            .iter()
            .filter(|r| gateway(r) && r.scenario == scenario && r.transport == Some(t))
            .map(|r| (r.connected, r.cpu_us_per_delivery))
            .collect();
        let low = costs.iter().map(|c| c.0).min().unwrap_or(0);
        let high = costs.iter().map(|c| c.0).max().unwrap_or(0);
        if costs.len() < 2 || low > 2_000 || high < 10_000 {
            continue;
        }
        let min = costs.iter().map(|c| c.1).fold(f64::MAX, f64::min);
        let max = costs.iter().map(|c| c.1).fold(0.0, f64::max);
        found = Some((format!("{scenario} {t}"), min, max, costs.len()));
        break;
    }
    match found {
        Some((name, min, max, n)) => out.push(goal(
            text,
            format!(
                "{name}: {min:.2} to {max:.2} µs over {n} points ({:+.0}%)",
                100.0 * (max / min.max(1e-9) - 1.0)
            ),
            Some(max <= min * 1.2),
        )),
        None => out.push(goal(
            text,
            "not measured (run a subscriber sweep from ≤2k to ≥10k)".into(),
            None,
        )),
    }
    out
}

/// What report.json holds.
#[derive(Debug, Serialize)]
struct ReportJson<'a> {
    machine: Machine,
    results: &'a [RunResult],
    verdicts: Vec<Verdict>,
    comparisons: Vec<Comparison>,
    goals: Vec<Goal>,
    capacity: CapacityPlan,
}

#[derive(Debug, Serialize, Deserialize)]
struct Machine {
    cpus: usize,
    open_file_limit: u64,
}

fn per_core(r: &RunResult) -> f64 {
    if r.target_cpu_s > 0.0 {
        r.delivered as f64 / r.target_cpu_s
    } else {
        0.0
    }
}

fn exact(r: &RunResult) -> bool {
    r.delivered > 0
        && r.lost == 0
        && r.duplicates == 0
        && r.reordered == 0
        && r.failed == 0
        && r.delivered == r.expected
}

/// Verdicts for the largest run of every (target, transport).
pub fn verdicts(results: &[RunResult]) -> Vec<Verdict> {
    let refs: Vec<&RunResult> = results.iter().collect();
    let largest = charts::largest_per_series(&refs);
    let mut out = Vec::new();
    for r in &largest {
        let same_target: Vec<&&RunResult> = largest
            .iter()
            .filter(|o| o.scenario == r.scenario && o.target == r.target && exact(o))
            .collect();
        let mut words = Vec::new();
        if !exact(r) {
            words.push(format!(
                "not exact: {} lost, {} duplicated, {} reordered, {} failed to connect",
                r.lost, r.duplicates, r.reordered, r.failed
            ));
        } else {
            let best_cost = same_target.iter().map(|o| per_core(o)).fold(0.0, f64::max);
            let best_p99 = same_target
                .iter()
                .map(|o| o.latency_us.p99)
                .min()
                .unwrap_or(0);
            let best_mem = same_target
                .iter()
                .map(|o| o.pss_per_conn)
                .fold(f64::MAX, f64::min);
            if same_target.len() > 1 && per_core(r) >= best_cost {
                words.push("cheapest per delivery".to_string());
            }
            if same_target.len() > 1 && r.latency_us.p99 == best_p99 {
                words.push("lowest p99".to_string());
            }
            if same_target.len() > 1 && r.pss_per_conn <= best_mem {
                words.push("lightest idle connection".to_string());
            }
            match r.transport {
                Some(Transport::Poll) => words.push(format!(
                    "latency bounded by the {} ms interval; requests grow with clients, not messages",
                    r.poll_interval_ms
                )),
                Some(Transport::Longpoll) => {
                    words.push("one request per answer: cost grows with message rate".into())
                }
                _ => {}
            }
            if words.is_empty() {
                words.push("exact delivery".into());
            }
        }
        if r.generator_bound {
            words.push("generator-bound: figures are a lower bound".into());
        }
        out.push(Verdict {
            scenario: r.scenario.clone(),
            target: r.target.clone(),
            transport: r.transport.map(|t| t.name()).unwrap_or("?").into(),
            exact: exact(r),
            p99_ms: r.latency_us.p99 as f64 / 1000.0,
            deliveries_per_core_s: per_core(r),
            kib_per_conn: r.pss_per_conn / 1024.0,
            bytes_per_delivery: r.server_bytes_per_delivery,
            verdict: words.join("; "),
        });
    }
    out
}

/// Gateway against Nchan per transport, where both ran.
pub fn comparisons(results: &[RunResult]) -> Vec<Comparison> {
    let refs: Vec<&RunResult> = results.iter().collect();
    let largest = charts::largest_per_series(&refs);
    let mut out = Vec::new();
    for g in largest
        .iter()
        .filter(|r| r.kind == Some(TargetKind::Gateway))
    {
        for p in largest.iter().filter(|r| {
            r.kind == Some(TargetKind::Nchan)
                && r.transport == g.transport
                && r.scenario == g.scenario
        }) {
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            out.push(Comparison {
                scenario: g.scenario.clone(),
                transport: g.transport.map(|t| t.name()).unwrap_or("?").into(),
                gateway: g.target.clone(),
                peer: p.target.clone(),
                memory_ratio: ratio(g.pss_per_conn, p.pss_per_conn),
                efficiency_ratio: ratio(per_core(g), per_core(p)),
                p99_ratio: ratio(g.latency_us.p99 as f64, p.latency_us.p99 as f64),
            });
        }
    }
    out
}

/// Write report.md, report.json and the charts into `out`.
pub fn write(out: &Path, results: &[RunResult], inputs: &CapacityInputs) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let chart_files = charts::write_all(&out.join("charts"), results)?;
    let verdicts = verdicts(results);
    let comparisons = comparisons(results);
    let plan = capacity::plan(inputs, results);
    let goals = goals(results);
    let machine = Machine {
        cpus: procfs::cpu_count(),
        open_file_limit: rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(_, hard)| hard)
            .unwrap_or(0),
    };

    let md = markdown(
        results,
        &verdicts,
        &comparisons,
        &goals,
        &plan,
        &machine,
        &chart_files,
        out,
    );
    std::fs::write(out.join("report.md"), md)?;
    let json = ReportJson {
        machine,
        results,
        verdicts,
        comparisons,
        goals,
        capacity: plan,
    };
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&json)?)?;
    Ok(())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    results: &[RunResult],
    verdicts: &[Verdict],
    comparisons: &[Comparison],
    goals: &[Goal],
    plan: &CapacityPlan,
    machine: &Machine,
    charts: &[PathBuf],
    out: &Path,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Load test report\n");
    let _ = writeln!(
        md,
        "Machine: {} CPUs, open-file limit {} per process. The load generator runs on the same machine as the target; its CPU is shown beside the target's.\n",
        machine.cpus, machine.open_file_limit
    );

    let mut scenarios: Vec<String> = results.iter().map(|r| r.scenario.clone()).collect();
    scenarios.dedup();
    let _ = writeln!(md, "Scenarios: {}.\n", scenarios.join(", "));

    let _ = writeln!(md, "## Delivery and throughput\n");
    let _ = writeln!(
        md,
        "| scenario | target | transport | spread | subs | channels | rate/s | payload B | published | delivered | lost | dup | reordered | resume fail | reconnects | deliveries/s |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {:.0} |",
            r.scenario,
            r.target,
            r.transport.map(|t| t.name()).unwrap_or("?"),
            r.spread.map(|s| format!("{s:?}")).unwrap_or_default(),
            r.connected,
            r.channels,
            r.rate,
            r.payload,
            r.published,
            r.delivered,
            r.expected,
            r.lost,
            r.duplicates,
            r.reordered,
            r.resume_failures,
            r.reconnects,
            r.deliveries_per_s
        );
    }

    let _ = writeln!(md, "\n## Latency (publish to receive, ms)\n");
    let _ = writeln!(md, "| scenario | target | transport | subs | p50 | p90 | p99 | p99.9 | max | connect p99 | publish RTT p99 |");
    let _ = writeln!(md, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in results {
        let l = &r.latency_us;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} |",
            r.scenario,
            r.target,
            r.transport.map(|t| t.name()).unwrap_or("?"),
            r.connected,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            ms(r.connect_us.p99),
            ms(r.publish_rtt_us.p99)
        );
    }

    let _ = writeln!(md, "\n## Cost on the target\n");
    let _ = writeln!(
        md,
        "Memory is read idle, after every subscriber connected and a settle pause: (after − before) / connections. PSS splits shared pages between nginx's processes; socket memory is the growth of the kernel's TCP buffer memory (/proc/net/sockstat; idle sockets hold almost none), and slab the growth of the kernel's slab (socket, file and inode structures of both loopback ends). Server bytes per delivery are what the kernel sent on the target's client sockets over the publish window (`bytes_sent` from `ss`, framing and HTTP heads included); client bytes are what subscribers read.\n"
    );
    let _ = writeln!(md, "| scenario | target | transport | subs | target CPU % | CPU µs/delivery | RSS B/conn | PSS B/conn | socket B/conn | slab B/conn | server B/delivery | client B/delivery | generator CPU % | machine busy % | bottleneck |");
    let _ = writeln!(
        md,
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            r.scenario,
            r.target,
            r.transport.map(|t| t.name()).unwrap_or("?"),
            r.connected,
            r.target_cpu_pct,
            r.cpu_us_per_delivery,
            r.rss_per_conn,
            r.pss_per_conn,
            r.sock_mem_per_conn,
            r.slab_per_conn,
            r.server_bytes_per_delivery,
            r.client_bytes_per_delivery,
            r.generator_cpu_pct,
            r.machine_busy_pct,
            r.bottleneck
        );
    }

    let errors: Vec<&RunResult> = results.iter().filter(|r| !r.errors.is_empty()).collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\n## Errors\n");
        for r in errors {
            let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
            let _ = writeln!(
                md,
                "- {} {}: {}",
                r.target,
                r.transport.map(|t| t.name()).unwrap_or("?"),
                list.join("; ")
            );
        }
    }

    let benches: Vec<&RunResult> = results.iter().filter(|r| r.redis.is_some()).collect();
    if !benches.is_empty() {
        let _ = writeln!(md, "\n## Redis publish rate\n");
        let _ = writeln!(md, "Measured after each run that published through Redis, on the same Redis: raw `PUBLISH` with `redis-benchmark`, and `FCALL gw_publish` (offset, history and publish in one call) from the harness, with the same clients and payload.\n");
        let _ = writeln!(
            md,
            "| target | transport | clients | payload B | raw PUBLISH/s | gw_publish/s | ratio |"
        );
        let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|");
        for r in benches {
            if let Some(b) = &r.redis {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.0} | {:.0} | {:.2} |",
                    r.target,
                    r.transport.map(|t| t.name()).unwrap_or("?"),
                    b.clients,
                    b.payload,
                    b.raw_publish_per_s,
                    b.gw_publish_per_s,
                    if b.raw_publish_per_s > 0.0 {
                        b.gw_publish_per_s / b.raw_publish_per_s
                    } else {
                        0.0
                    }
                );
            }
        }
    }

    let _ = writeln!(md, "\n## Verdict\n");
    let _ = writeln!(md, "| scenario | target | transport | exact | p99 ms | deliveries per core-second | KiB/conn | B/delivery | verdict |");
    let _ = writeln!(md, "|---|---|---|---|--:|--:|--:|--:|---|");
    for v in verdicts {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.0} | {} |",
            v.scenario,
            v.target,
            v.transport,
            if v.exact { "yes" } else { "NO" },
            v.p99_ms,
            v.deliveries_per_core_s,
            v.kib_per_conn,
            v.bytes_per_delivery,
            v.verdict
        );
    }

    if !comparisons.is_empty() {
        let _ = writeln!(md, "\n## Gateway side by side with Nchan\n");
        let _ = writeln!(md, "Ratios are gateway ÷ peer: memory below 1 and efficiency above 1 favour the gateway.\n");
        let _ = writeln!(md, "| scenario | transport | gateway | peer | memory/conn ratio | deliveries per core-second ratio | p99 ratio |");
        let _ = writeln!(md, "|---|---|---|---|--:|--:|--:|");
        for c in comparisons {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                c.scenario,
                c.transport,
                c.gateway,
                c.peer,
                c.memory_ratio,
                c.efficiency_ratio,
                c.p99_ratio
            );
        }
    }

    let _ = writeln!(md, "\n## Performance goals\n");
    let _ = writeln!(md, "| goal | measured | met |");
    let _ = writeln!(md, "|---|---|---|");
    for g in goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {} | {} |", g.goal, g.measured, met);
    }

    let _ = writeln!(md, "\n## Capacity plan\n");
    let i = &plan.inputs;
    let _ = writeln!(
        md,
        "Inputs: {:.0} daily active users, {} writes per user per day, {} reads per write, peak factor {}, {} B messages, {:.0}% of users connected at peak, nodes of {} cores and {} GiB planned to {:.0}% use.\n",
        i.dau, i.interactions, i.read_write_ratio, i.peak_factor, i.message_bytes, i.online_share * 100.0, i.node_cores, i.node_memory_gib, i.headroom * 100.0
    );
    let _ = writeln!(
        md,
        "Peak: {:.0} publishes/s, {:.0} deliveries/s, {:.0} connections.\n",
        plan.writes_per_s, plan.deliveries_per_s, plan.connections
    );
    let _ = writeln!(md, "| target | transport | measured in | at subs | requests/s | bandwidth Mbit/s | cores | memory GiB | GiB per 1M conns | nodes | bound by |");
    let _ = writeln!(md, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|");
    for row in &plan.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} |",
            row.target,
            row.transport,
            row.scenario,
            row.measured_at,
            row.requests_per_s,
            row.bandwidth_mbit,
            row.cores,
            row.memory_gib,
            row.memory_per_million_gib,
            row.nodes,
            row.bound_by
        );
    }
    match (plan.redis_publish_per_shard, plan.redis_shards) {
        (Some(rate), Some(shards)) => {
            let _ = writeln!(
                md,
                "\nRedis: one shard sustained {rate:.0} `gw_publish` calls/s (measured in this run); the peak needs {shards} shard(s)."
            );
        }
        _ => {
            let _ = writeln!(
                md,
                "\nRedis: no run published through Redis, so no shard rate was measured and no shard count is computed (run with `--publish-via redis`)."
            );
        }
    }
    let _ = writeln!(
        md,
        "\nCPU scales with deliveries (measured µs per delivery); memory with connections (PSS plus the server's half of the kernel slab growth; TCP buffer memory is left out, since idle sockets hold none and the machine-wide counter moves with other processes' traffic); nodes are the largest of CPU, memory and the {:.0}-connection file limit per process.",
        capacity::CONNECTIONS_PER_PROCESS
    );

    let _ = writeln!(md, "\n## Charts\n");
    for c in charts {
        let rel = c.strip_prefix(out).unwrap_or(c);
        let _ = writeln!(md, "![{}]({})\n", rel.display(), rel.display());
    }
    md
}
