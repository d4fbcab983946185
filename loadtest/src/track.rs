//! Exact delivery accounting for one subscriber: per channel it holds, which
//! sequence numbers arrived, so loss, duplicates and reordering are counted
//! exactly rather than estimated. Publishing starts only after every
//! subscriber is connected, so each subscriber expects sequence 1 up to the
//! last one published on each of its channels.

use serde::{Deserialize, Serialize};

/// Most sequence numbers remembered as "skipped, may still arrive" per
/// channel. A gap wider than this is counted as lost at once; with history
/// resume on every target, gaps are normally a handful wide.
const MAX_PENDING_GAP: usize = 4096;

/// What one receipt was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// The next one expected, or a new one after a gap.
    Fresh,
    /// One that was skipped earlier and arrived late.
    Reordered,
    /// Already received.
    Duplicate,
    /// A channel this subscriber does not hold.
    Foreign,
}

/// One channel of one subscriber.
#[derive(Debug)]
struct ChannelTrack {
    /// Channel index.
    ch: u32,
    /// Next sequence number expected in order.
    next: u64,
    /// Numbers below `next` that were skipped and have not arrived yet.
    pending: Vec<u64>,
    /// Gap numbers dropped from `pending` because the gap was too wide.
    overflow_lost: u64,
}

/// Per-subscriber accounting.
#[derive(Debug)]
pub struct Tracker {
    /// One entry per channel held (one or two in every spread).
    chans: Vec<ChannelTrack>,
}

/// Counts that add up over subscribers and workers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tally {
    /// Distinct messages received.
    pub unique: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages that arrived after a later one of the same channel.
    pub reordered: u64,
    /// Messages published on a held channel that never arrived.
    pub lost: u64,
    /// Messages of channels the subscriber does not hold.
    pub foreign: u64,
}

impl Tracker {
    /// A tracker for a subscriber holding `channels`.
    pub fn new(channels: &[u32]) -> Tracker {
        Tracker {
            chans: channels
                .iter()
                .map(|&ch| ChannelTrack {
                    ch,
                    next: 1,
                    pending: Vec::new(),
                    overflow_lost: 0,
                })
                .collect(),
        }
    }

    /// Record the receipt of `seq` on channel `ch`.
    pub fn record(&mut self, ch: u32, seq: u64) -> Receipt {
        let Some(track) = self.chans.iter_mut().find(|t| t.ch == ch) else {
            return Receipt::Foreign;
        };

        if seq == track.next {
            track.next += 1;
            return Receipt::Fresh;
        }

        if seq > track.next {
            let gap = seq - track.next;
            let room = MAX_PENDING_GAP.saturating_sub(track.pending.len()) as u64;
            let kept = gap.min(room);
            track.pending.extend(track.next..track.next + kept);
            track.overflow_lost += gap - kept;
            track.next = seq + 1;
            return Receipt::Fresh;
        }

        match track.pending.iter().position(|&p| p == seq) {
            Some(at) => {
                track.pending.swap_remove(at);
                Receipt::Reordered
            }
            None => Receipt::Duplicate,
        }
    }

    /// Whether every channel has received everything up to `expected[ch]`.
    #[cfg(test)]
    pub fn complete(&self, expected: &[u64]) -> bool {
        self.chans.iter().all(|t| {
            let want = expected.get(t.ch as usize).copied().unwrap_or(0);
            t.pending.is_empty() && t.overflow_lost == 0 && t.next > want
        })
    }

    /// Whether anything at all arrived.
    pub fn received_any(&self) -> bool {
        self.chans.iter().any(|t| t.next > 1)
    }

    /// Messages lost so far given the last sequence published per channel.
    pub fn lost(&self, expected: &[u64]) -> u64 {
        self.chans
            .iter()
            .map(|t| {
                let want = expected.get(t.ch as usize).copied().unwrap_or(0);
                let tail = want.saturating_sub(t.next.saturating_sub(1));
                t.pending.len() as u64 + t.overflow_lost + tail
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_receipts_are_complete() {
        let mut t = Tracker::new(&[0]);
        for seq in 1..=5 {
            assert_eq!(t.record(0, seq), Receipt::Fresh);
        }
        assert!(t.complete(&[5]));
        assert_eq!(t.lost(&[5]), 0);
        assert_eq!(t.lost(&[7]), 2);
    }

    #[test]
    fn gap_then_late_arrival_counts_as_reordered_not_lost() {
        let mut t = Tracker::new(&[3]);
        t.record(3, 1);
        t.record(3, 3);
        assert_eq!(t.lost(&[0, 0, 0, 3]), 1);
        assert_eq!(t.record(3, 2), Receipt::Reordered);
        assert_eq!(t.lost(&[0, 0, 0, 3]), 0);
        assert_eq!(t.record(3, 2), Receipt::Duplicate);
        assert_eq!(t.record(3, 1), Receipt::Duplicate);
        assert_eq!(t.record(9, 1), Receipt::Foreign);
    }

    #[test]
    fn very_wide_gap_is_bounded_and_counted() {
        let mut t = Tracker::new(&[0]);
        t.record(0, 10_000);
        assert_eq!(t.lost(&[10_000]), 9_999);
        assert!(!t.complete(&[10_000]));
    }
}
