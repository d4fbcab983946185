//! The capacity plan: from a service's daily active users, interactions per
//! user, read/write ratio, peak factor and message size, the requests per
//! second, bandwidth, gateway nodes and Redis shards it needs, computed from
//! the figures a run just measured (CPU per delivery, memory per connection,
//! bytes per delivery, Redis publish rate), never from assumed ones.

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{run::RunResult, scenario::Transport};

/// Connections one gateway process can hold: the open-file limit here is
/// 20000, less head-room for listeners, Redis and log files.
pub const CONNECTIONS_PER_PROCESS: f64 = 19_000.0;

/// Capacity-plan inputs (flags of `run`, `sweep` and `report`).
#[derive(Args, Debug, Clone)]
pub struct CapacityArgs {
    /// Daily active users.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub dau: f64,
    /// Writes (publishes) per user per day.
    #[arg(long, default_value_t = 20.0)]
    pub interactions: f64,
    /// Reads per write: deliveries each publish fans out to.
    #[arg(long, default_value_t = 10.0)]
    pub read_write_ratio: f64,
    /// Peak traffic over the daily average.
    #[arg(long, default_value_t = 4.0)]
    pub peak_factor: f64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 512)]
    pub message_bytes: usize,
    /// Share of daily active users connected at the peak.
    #[arg(long, default_value_t = 0.25)]
    pub online_share: f64,
    /// CPU cores per gateway node.
    #[arg(long, default_value_t = 2.0)]
    pub node_cores: f64,
    /// Memory per gateway node, GiB.
    #[arg(long, default_value_t = 8.0)]
    pub node_memory_gib: f64,
    /// Highest planned utilisation of CPU, memory and Redis (0..1).
    #[arg(long, default_value_t = 0.6)]
    pub headroom: f64,
}

impl CapacityArgs {
    /// The inputs as saved in report.json.
    pub fn inputs(&self) -> CapacityInputs {
        CapacityInputs {
            dau: self.dau,
            interactions: self.interactions,
            read_write_ratio: self.read_write_ratio,
            peak_factor: self.peak_factor,
            message_bytes: self.message_bytes,
            online_share: self.online_share,
            node_cores: self.node_cores,
            node_memory_gib: self.node_memory_gib,
            headroom: self.headroom,
        }
    }
}

/// See [`CapacityArgs`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CapacityInputs {
    /// Daily active users.
    pub dau: f64,
    /// Writes per user per day.
    pub interactions: f64,
    /// Deliveries per write.
    pub read_write_ratio: f64,
    /// Peak over average.
    pub peak_factor: f64,
    /// Message bytes.
    pub message_bytes: usize,
    /// Share of users connected at peak.
    pub online_share: f64,
    /// Cores per node.
    pub node_cores: f64,
    /// GiB per node.
    pub node_memory_gib: f64,
    /// Planned utilisation.
    pub headroom: f64,
}

/// One row of the plan: one target and transport.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CapacityRow {
    /// Scenarios the memory and the cost figures come from.
    pub scenario: String,
    /// Target label.
    pub target: String,
    /// Transport.
    pub transport: String,
    /// Subscribers of the run the figures come from.
    pub measured_at: usize,
    /// HTTP requests per second at peak (publishes plus polls).
    pub requests_per_s: f64,
    /// Outbound bandwidth at peak, Mbit/s.
    pub bandwidth_mbit: f64,
    /// CPU cores needed at peak.
    pub cores: f64,
    /// Memory for the peak connections, GiB.
    pub memory_gib: f64,
    /// Memory for one million connections, GiB.
    pub memory_per_million_gib: f64,
    /// Gateway nodes: the largest of the CPU, memory and file-limit needs.
    pub nodes: u64,
    /// Which of CPU, memory or connections decides the node count.
    pub bound_by: String,
}

/// The plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CapacityPlan {
    /// Inputs.
    pub inputs: CapacityInputs,
    /// Publishes per second at peak.
    pub writes_per_s: f64,
    /// Deliveries per second at peak.
    pub deliveries_per_s: f64,
    /// Connections at peak.
    pub connections: f64,
    /// Per target and transport.
    pub rows: Vec<CapacityRow>,
    /// `gw_publish` calls/s one Redis shard sustained, if measured.
    pub redis_publish_per_shard: Option<f64>,
    /// Redis shards needed, if a Redis-path rate was measured.
    pub redis_shards: Option<u64>,
}

/// Build the plan from measured results: per (target, transport), memory
/// per connection comes from the run with the most connections, and CPU and
/// bytes per delivery from the exact run with the most deliveries (an idle
/// run's few deliveries say nothing about cost).
pub fn plan(inputs: &CapacityInputs, results: &[RunResult]) -> CapacityPlan {
    let i = inputs;
    let writes = i.dau * i.interactions / 86_400.0 * i.peak_factor;
    let deliveries = writes * i.read_write_ratio;
    let connections = i.dau * i.online_share;
    let headroom = i.headroom.clamp(0.05, 1.0);

    let mut rows = Vec::new();
    let mut keys: Vec<(String, Transport)> = results
        .iter()
        .filter_map(|r| Some((r.target.clone(), r.transport?)))
        .collect();
    keys.sort();
    keys.dedup();
    for (target, transport) in keys {
        let runs = || {
            results
                .iter()
                .filter(|r| r.target == target && r.transport == Some(transport))
                .filter(|r| r.delivered > 0)
        };
        let (Some(m), Some(r)) = (
            runs().max_by_key(|r| (r.lost == 0, r.connected)),
            runs().max_by_key(|r| (r.lost == 0, r.delivered)),
        ) else {
            continue;
        };

        // Per-connection memory on the server: process memory plus the
        // server's half of the slab growth (socket structures; both ends are
        // counted on loopback). TCP buffer memory is left out: idle sockets
        // hold none, and the machine-wide counter moves with every other
        // process's traffic.
        let per_conn = m.pss_per_conn.max(0.0) + m.slab_per_conn.max(0.0) / 2.0;
        let memory_gib = connections * per_conn / GIB;
        let overhead = (r.server_bytes_per_delivery - r.payload as f64).max(0.0);
        let bytes = overhead + i.message_bytes as f64;
        let polls = match transport {
            Transport::Poll => connections / (r.poll_interval_ms.max(1) as f64 / 1000.0),
            // Each long-poll answer carries at least one delivery.
            Transport::Longpoll => deliveries,
            Transport::Ws | Transport::Sse => 0.0,
        };
        let cores = deliveries * r.cpu_us_per_delivery / 1e6;
        let by_cpu = cores / (i.node_cores * headroom);
        let by_mem = memory_gib / (i.node_memory_gib * headroom);
        let by_fd = connections / CONNECTIONS_PER_PROCESS;
        let need = by_cpu.max(by_mem).max(by_fd);
        let bound_by = if need == by_cpu {
            "cpu"
        } else if need == by_mem {
            "memory"
        } else {
            "connections"
        };
        rows.push(CapacityRow {
            scenario: format!("memory: {}, cost: {}", m.scenario, r.scenario),
            target,
            transport: transport.name().into(),
            measured_at: m.connected as usize,
            requests_per_s: writes + polls,
            bandwidth_mbit: deliveries * bytes * 8.0 / 1e6,
            cores,
            memory_gib,
            memory_per_million_gib: 1e6 * per_conn / GIB,
            nodes: need.ceil().max(1.0) as u64,
            bound_by: bound_by.into(),
        });
    }

    let redis_publish_per_shard = results
        .iter()
        .filter_map(|r| r.redis.as_ref())
        .map(|b| b.gw_publish_per_s)
        .fold(None, |best: Option<f64>, v| {
            Some(best.map_or(v, |b| b.max(v)))
        });
    let redis_shards =
        redis_publish_per_shard.map(|rate| (writes / (rate * headroom)).ceil().max(1.0) as u64);

    CapacityPlan {
        inputs: inputs.clone(),
        writes_per_s: writes,
        deliveries_per_s: deliveries,
        connections,
        rows,
        redis_publish_per_shard,
        redis_shards,
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> CapacityInputs {
        CapacityInputs {
            dau: 864_000.0,
            interactions: 10.0,
            read_write_ratio: 5.0,
            peak_factor: 2.0,
            message_bytes: 100,
            online_share: 0.5,
            node_cores: 2.0,
            node_memory_gib: 8.0,
            headroom: 0.5,
        }
    }

    #[test]
    fn plan_follows_measured_figures() {
        let r = RunResult {
            target: "gateway".into(),
            transport: Some(Transport::Ws),
            connected: 10_000,
            delivered: 1,
            payload: 128,
            cpu_us_per_delivery: 2.0,
            pss_per_conn: 4096.0,
            server_bytes_per_delivery: 160.0,
            ..RunResult::default()
        };
        let p = plan(&inputs(), &[r]);
        assert!((p.writes_per_s - 200.0).abs() < 1e-9);
        assert!((p.deliveries_per_s - 1000.0).abs() < 1e-9);
        let row = &p.rows[0];
        // 432k connections need 23 processes by the file limit alone.
        assert_eq!(row.nodes, 23);
        assert_eq!(row.bound_by, "connections");
        assert!((row.bandwidth_mbit - 1000.0 * 132.0 * 8.0 / 1e6).abs() < 1e-9);
        assert!(p.redis_shards.is_none());
    }
}
