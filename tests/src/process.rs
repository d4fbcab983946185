//! Process control for fault injection: POSIX signals to a child the test
//! started (SIGSTOP, SIGCONT, SIGTERM, ...) and its resident memory as the
//! kernel reports it in `/proc/PID/status`.
//!
//! Signals go through the `kill` utility, which keeps the crate free of
//! unsafe signal calls. Only ever pass the pid of a child this test spawned.

use anyhow::{bail, Context, Result};

/// Sends `signal` (a name such as `STOP`, `CONT`, `TERM`) to process `pid`.
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .with_context(|| format!("running kill -{signal} {pid}"))?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed with {status}");
    }
    Ok(())
}

/// The resident set size of process `pid` in bytes (`VmRSS` of
/// `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// `VmRSS:   12345 kB` as bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(kib * 1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_in_kib_as_bytes() {
        let status = "Name:\tgateway\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_has_resident_memory() -> Result<()> {
        assert!(rss_bytes(std::process::id())? > 0);
        Ok(())
    }
}
