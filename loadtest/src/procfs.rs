//! Measures read from /proc: a process's CPU time, RSS, PSS and bytes
//! written; kernel socket memory from /proc/net/sockstat; whole-machine CPU
//! from /proc/stat; and which processes hold a listening port (so a target's
//! PIDs are found without being told). Reading only, never writing.

use std::{collections::BTreeSet, fs, net::SocketAddr};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Clock ticks per second in /proc's CPU fields. Linux fixes USER_HZ at 100
/// in its user-space ABI on every architecture this harness runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Bytes per page in /proc/net/sockstat's `mem` field.
const PAGE_BYTES: u64 = 4096;

/// One reading of a set of processes, summed.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ProcSample {
    /// User plus system CPU, seconds.
    pub cpu_s: f64,
    /// Resident set size, bytes (shared pages counted once per process).
    pub rss: u64,
    /// Proportional set size, bytes (shared pages split between sharers, so
    /// a multi-process server such as nginx is not counted twice).
    pub pss: u64,
    /// Bytes the processes asked the kernel to write (`wchar`, includes
    /// socket writes).
    pub wchar: u64,
}

/// Read and sum the given processes; a process that has gone is skipped.
pub fn sample(pids: &[u32]) -> ProcSample {
    let mut total = ProcSample::default();
    for &pid in pids {
        if let Some(s) = sample_one(pid) {
            total.cpu_s += s.cpu_s;
            total.rss += s.rss;
            total.pss += s.pss;
            total.wchar += s.wchar;
        }
    }
    total
}

fn sample_one(pid: u32) -> Option<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;

    // The command name is in parentheses and may hold spaces: split after it.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;

    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = kib_field(&status, "VmRSS:").unwrap_or(0) * 1024;
    let pss = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| kib_field(&s, "Pss:"))
        .map(|k| k * 1024)
        .unwrap_or(rss);
    let wchar = fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);

    Some(ProcSample {
        cpu_s: (utime + stime) / TICKS_PER_SECOND,
        rss,
        pss,
        wchar,
    })
}

/// A `Name:   123 kB` line's number.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Kernel memory held by TCP sockets, bytes (all sockets on the machine:
/// on loopback both ends of every connection are counted).
pub fn tcp_socket_memory() -> u64 {
    fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("TCP:"))?;
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if w == "mem" {
                    return words.next()?.parse::<u64>().ok();
                }
            }
            None
        })
        .map(|pages| pages * PAGE_BYTES)
        .unwrap_or(0)
}

/// Bytes the kernel has sent on every established TCP socket whose local
/// port is one of `ports` (the target's side of its client connections),
/// from `ss`'s `bytes_sent`. Sockets closed in between are not counted, so
/// under churn this is a lower bound. `wchar` is no substitute: `send(2)`,
/// which Rust's standard library writes sockets with, does not count there.
pub fn socket_bytes_sent(ports: &[u16]) -> Option<u64> {
    if ports.is_empty() {
        return Some(0);
    }
    let filter: Vec<String> = ports.iter().map(|p| format!("sport = :{p}")).collect();
    let output = std::process::Command::new("ss")
        .args(["-tinH", "state", "established"])
        .arg(format!("( {} )", filter.join(" or ")))
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let total = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_sent:"))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Some(total)
}

/// Kernel slab memory (`Slab:` of /proc/meminfo), bytes: where socket,
/// file and inode structures live, which `sockstat`'s `mem` does not count.
pub fn slab_memory() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| kib_field(&s, "Slab:"))
        .map(|k| k * 1024)
        .unwrap_or(0)
}

/// Whole-machine CPU counters from /proc/stat: (busy ticks, total ticks).
pub fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Number of CPUs the machine has online.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Every process holding the TCP socket that listens on `addr` (for nginx:
/// the master and all workers; for the gateway: its one process).
pub fn pids_listening_on(addr: SocketAddr) -> anyhow::Result<Vec<u32>> {
    let inodes = listening_inodes(addr.port())?;
    anyhow::ensure!(!inodes.is_empty(), "nothing listens on {addr}");

    let mut pids = BTreeSet::new();
    for entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            let held = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode));
            if held {
                pids.insert(pid);
                break;
            }
        }
    }
    Ok(pids.into_iter().collect())
}

/// Inodes of TCP sockets in LISTEN state on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> anyhow::Result<BTreeSet<u64>> {
    const LISTEN: &str = "0A";
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == LISTEN && local_port == Some(port) {
                if let Ok(inode) = inode.parse() {
                    inodes.insert(inode);
                }
            }
        }
    }
    Ok(inodes)
}

/// Pin every thread of `pid` to the CPUs in `cpus` (a `taskset` list such
/// as `0` or `1-3`); false when `taskset` is missing or refused. A thread
/// that exits while `taskset` walks them fails the call, so it is tried a
/// few times (runtimes start and stop blocking-pool threads).
pub fn pin(pid: u32, cpus: &str) -> bool {
    (0..5).any(|attempt| {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Raise this process's soft open-file limit to its hard limit; returns the
/// limit now in force.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_reads_back() {
        let s = sample(&[std::process::id()]);
        assert!(s.rss > 0);
        assert!(s.pss > 0);
    }

    #[test]
    fn finds_the_process_holding_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pids = pids_listening_on(addr).unwrap();
        assert_eq!(pids, vec![std::process::id()]);
    }
}
