//! `loadtest sweep`: run one scenario several times, varying one dimension
//! (subscribers, payload size, publish rate or transport), so the report
//! shows how cost grows with work. Each point is a full `run` into its own
//! sub-folder; targets the harness starts are restarted per point.

use std::{path::Path, str::FromStr};

use anyhow::{bail, Context};

use crate::{
    run::{self, RunResult},
    scenario::{Scenario, Transport},
};

/// What a sweep varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// Subscriber count.
    Subscribers,
    /// Payload bytes.
    Payload,
    /// Publishes per second.
    Rate,
    /// Transport (one per point).
    Transport,
}

impl FromStr for Dimension {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "subscribers" => Dimension::Subscribers,
            "payload" => Dimension::Payload,
            "rate" => Dimension::Rate,
            "transport" => Dimension::Transport,
            other => bail!("cannot sweep {other:?} (subscribers, payload, rate, transport)"),
        })
    }
}

/// Apply one sweep value to a scenario.
fn apply(base: &Scenario, dim: Dimension, value: &str) -> anyhow::Result<Scenario> {
    let mut s = base.clone();
    match dim {
        Dimension::Subscribers => s.subscribers = value.parse().context("subscribers")?,
        Dimension::Payload => s.payload = value.parse().context("payload")?,
        Dimension::Rate => s.rate = value.parse().context("rate")?,
        Dimension::Transport => s.transports = vec![value.parse::<Transport>()?],
    }
    s.validate()?;
    Ok(s)
}

/// Run every point; results of all points in order.
pub async fn run(
    base: &Scenario,
    dim: Dimension,
    values: &[String],
    out: &Path,
) -> anyhow::Result<Vec<RunResult>> {
    if values.is_empty() {
        bail!("give --values to sweep over");
    }
    let mut all = Vec::new();
    for value in values {
        let mut s = apply(base, dim, value)?;
        s.name = format!("{}-sweep", base.name);
        let dir = out.join(format!("{dim:?}-{value}").to_lowercase());
        eprintln!("sweep point {dim:?} = {value}");
        all.extend(run::run_all(&s, &dir).await?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_values_apply_to_their_dimension() {
        let base = Scenario::default();
        assert_eq!(
            apply(&base, Dimension::Subscribers, "5000")
                .unwrap()
                .subscribers,
            5000
        );
        assert_eq!(
            apply(&base, Dimension::Transport, "sse")
                .unwrap()
                .transports,
            vec![Transport::Sse]
        );
        assert!(apply(&base, Dimension::Rate, "x").is_err());
    }
}
