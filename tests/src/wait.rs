//! Bounded waiting: every test body runs under [`within`], and every "until
//! the system reaches state X" check polls with [`eventually`] against a
//! deadline instead of sleeping for a guessed time.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};

/// The most one whole test may take. Generous for a 2-core machine running
/// several tests at once, and well under nextest's `terminate-after`, so a hung
/// test fails here with a message (and its gateway log) instead of being killed.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The most one step (a frame, an HTTP answer, a process start) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`eventually`] (and the process start-up waits) re-check.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Runs a test body with [`TEST_TIMEOUT`]; a timeout is an error naming it.
pub async fn within<F>(body: F) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    match tokio::time::timeout(TEST_TIMEOUT, body).await {
        Ok(result) => result,
        Err(_) => bail!("test did not finish within {TEST_TIMEOUT:?}"),
    }
}

/// Re-runs `check` until it returns `Ok(Some(value))`, or fails after
/// `deadline` with the last `Ok(None)` reason in `what`. An `Err` from `check`
/// ends the wait at once.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= give_up {
            bail!("{what}: not reached within {deadline:?}");
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}
