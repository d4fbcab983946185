//! The judgement of a fault run: what each subscriber received against what
//! was accepted, as figures (delivered, lost, duplicated, out of order) and
//! as an exact check ("every accepted message once, in order, unchanged").

use std::collections::{HashMap, HashSet};
use std::fmt;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::faults::publisher::{Accepted, PublisherRecord};

/// One message a subscriber must receive: where it was stored, and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub epoch: String,
    pub offset: u64,
    pub data: Value,
}

/// The distinct accepted messages in offset order (a message accepted twice
/// — once as a duplicate — counts once).
pub fn expected_of(accepted: &[Accepted]) -> Vec<Expected> {
    let mut seen = HashSet::new();
    accepted
        .iter()
        .filter(|a| seen.insert((a.position.epoch.clone(), a.position.offset)))
        .map(|a| Expected {
            epoch: a.position.epoch.clone(),
            offset: a.position.offset,
            data: json!({ "n": a.n }),
        })
        .collect()
}

/// The figures of one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    pub label: String,
    /// Distinct messages that should have arrived.
    pub expected: usize,
    /// Messages that did arrive, duplicates included.
    pub delivered: usize,
    /// Expected messages that never arrived.
    pub lost: usize,
    /// Arrivals of a message already received.
    pub duplicated: usize,
    /// Arrivals of a message older than the one before it.
    pub out_of_order: usize,
    /// Arrivals of a message nobody published (or with other data).
    pub foreign: usize,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} delivered {}/{} lost {} duplicated {} out-of-order {}",
            self.label,
            self.delivered,
            self.expected,
            self.lost,
            self.duplicated,
            self.out_of_order
        )?;
        if self.foreign > 0 {
            write!(f, " foreign {}", self.foreign)?;
        }
        Ok(())
    }
}

fn key_of(message: &Value) -> (String, u64) {
    (
        message["epoch"].as_str().unwrap_or_default().to_owned(),
        message["offset"].as_u64().unwrap_or(0),
    )
}

/// Counts what `received` did against `expected`.
pub fn tally(label: &str, expected: &[Expected], received: &[Value]) -> Figures {
    let index: HashMap<(String, u64), usize> = expected
        .iter()
        .enumerate()
        .map(|(i, e)| ((e.epoch.clone(), e.offset), i))
        .collect();
    let mut seen = HashSet::new();
    let mut figures = Figures {
        label: label.to_owned(),
        expected: expected.len(),
        delivered: received.len(),
        lost: 0,
        duplicated: 0,
        out_of_order: 0,
        foreign: 0,
    };
    let mut last: Option<usize> = None;
    for message in received {
        let Some(&i) = index.get(&key_of(message)) else {
            figures.foreign += 1;
            continue;
        };
        if message["data"] != expected[i].data {
            figures.foreign += 1;
        }
        if !seen.insert(i) {
            figures.duplicated += 1;
        } else if last.is_some_and(|l| i < l) {
            figures.out_of_order += 1;
        }
        last = Some(i);
    }
    figures.lost = expected.len() - seen.len();
    figures
}

/// Fails unless `received` is exactly `expected`: each once, in order, with
/// its data unchanged. The error names the first divergence.
pub fn ensure_exact(label: &str, expected: &[Expected], received: &[Value]) -> Result<()> {
    let figures = tally(label, expected, received);
    for (i, message) in received.iter().enumerate() {
        let Some(want) = expected.get(i) else {
            bail!("{figures}: message #{i} {message} is one too many");
        };
        let (epoch, offset) = key_of(message);
        if epoch != want.epoch || offset != want.offset || message["data"] != want.data {
            bail!(
                "{figures}: message #{i} should be {}:{} {} but is {message}",
                want.epoch,
                want.offset,
                want.data
            );
        }
    }
    if received.len() < expected.len() {
        let first_missing = &expected[received.len()];
        bail!(
            "{figures}: {} messages missing from {}:{} on",
            expected.len() - received.len(),
            first_missing.epoch,
            first_missing.offset
        );
    }
    Ok(())
}

/// The one line a fault test prints: the publisher's figures, then each
/// subscriber's.
pub fn summary(test: &str, publisher: Option<&PublisherRecord>, figures: &[Figures]) -> String {
    let mut line = format!("FIGURES {test}:");
    if let Some(p) = publisher {
        let refused: Vec<String> = p.refused.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let messages: HashSet<u64> = p.accepted.iter().map(|a| a.n).collect();
        line.push_str(&format!(
            " published {} messages in {} attempts (503s [{}], unanswered {}, \
             acks duplicate:true {}), accepted {};",
            messages.len(),
            p.attempts,
            refused.join(", "),
            p.unanswered,
            p.duplicates(),
            expected_of(&p.accepted).len(),
        ));
    }
    let parts: Vec<String> = figures.iter().map(ToString::to_string).collect();
    line.push(' ');
    line.push_str(&parts.join("; "));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(epoch: &str, offset: u64, n: u64) -> Value {
        json!({"type": "message", "epoch": epoch, "offset": offset, "data": {"n": n}})
    }

    fn expected(n: u64) -> Vec<Expected> {
        (1..=n)
            .map(|o| Expected {
                epoch: "e".into(),
                offset: o,
                data: json!({ "n": o - 1 }),
            })
            .collect()
    }

    #[test]
    fn counts_lost_duplicated_and_out_of_order() {
        let want = expected(4);
        let got = vec![
            message("e", 1, 0),
            message("e", 3, 2),
            message("e", 2, 1),
            message("e", 3, 2),
        ];
        let figures = tally("ws", &want, &got);
        assert_eq!(
            (
                figures.delivered,
                figures.lost,
                figures.duplicated,
                figures.out_of_order
            ),
            (4, 1, 1, 1)
        );
        assert!(ensure_exact("ws", &want, &got).is_err());
        let exact: Vec<Value> = (1..=4).map(|o| message("e", o, o - 1)).collect();
        assert!(ensure_exact("ws", &want, &exact).is_ok());
        assert_eq!(tally("ws", &want, &exact).lost, 0);
    }
}
