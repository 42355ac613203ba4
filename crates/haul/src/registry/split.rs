//! When one stream of a big blob is worth splitting into ranges over more connections: only when
//! the stream itself holds the download back. A registry on a fast link (or on this machine)
//! hands out bytes faster than hashing and extraction take them, and more connections there only
//! add requests, out-of-order writes and a read-back of every byte: measured on loopback, a
//! 48 MB layer pulled in 0.42 s over ranges and 0.34 s over one stream. A CDN capping each
//! connection, or a long round trip, leaves the download waiting for bytes instead: there more
//! connections multiply the rate.
//!
//! The stream is watched in windows of [`WINDOW`]: a window in which the sink (the disk, the
//! hash, the extraction) held the download up for at most [`SINK_BOUND`] of it says the stream is
//! the bottleneck; it is split when, at the rate of that window, the rest of the blob would still
//! take [`WORTH_SPLITTING`] or more. What the sink holds up is measured, not the wait for bytes:
//! an unpacking pull through a capped connection spent only 55% of each window inside the
//! stream's `next()` while its sink took microseconds per chunk, and a rule on the wait for bytes
//! never split it.

use std::time::{Duration, Instant};

/// How long the stream is watched before each verdict.
pub(super) const WINDOW: Duration = Duration::from_millis(250);
/// The most of a window the sink may hold the download up with the stream still its bottleneck.
const SINK_BOUND: f64 = 0.25;
/// The least time the rest of the blob must still take over one stream for more connections to
/// pay for their requests.
pub(super) const WORTH_SPLITTING: Duration = Duration::from_millis(500);

/// The watch over one stream's windows.
#[derive(Debug)]
pub(super) struct SplitWatch {
    started: Instant,
    held: Duration,
    bytes: u64,
}

impl SplitWatch {
    /// A watch whose first window starts now.
    pub(super) fn new() -> SplitWatch {
        SplitWatch {
            started: Instant::now(),
            held: Duration::ZERO,
            bytes: 0,
        }
    }

    /// `bytes` arrived, and the sink took `held` to take them.
    pub(super) fn arrived(&mut self, bytes: u64, held: Duration) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.held = self.held.saturating_add(held);
    }

    /// At the end of a window: whether the stream was the bottleneck through it and `remaining`
    /// bytes at its rate would take long enough to split. A new window starts either way; before
    /// the end of one, `false`.
    pub(super) fn verdict(&mut self, remaining: u64) -> bool {
        let elapsed = self.started.elapsed();
        if elapsed < WINDOW {
            return false;
        }
        let holding = self.held.as_secs_f64() / elapsed.as_secs_f64();
        let rate = self.bytes as f64 / elapsed.as_secs_f64();
        *self = SplitWatch::new();
        holding <= SINK_BOUND
            && (rate <= 0.0 || remaining as f64 / rate >= WORTH_SPLITTING.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(held: Duration, bytes: u64) -> SplitWatch {
        SplitWatch {
            started: Instant::now() - WINDOW,
            held,
            bytes,
        }
    }

    #[test]
    fn only_a_stream_that_keeps_the_download_waiting_is_split() {
        // 2.5 MB in 250 ms with the sink idle: 10 MB/s, the rest (40 MB) takes 4 s.
        assert!(window(Duration::ZERO, 2_500_000).verdict(40_000_000));
        // The same bytes with the sink holding the download up half the time: it keeps up.
        assert!(!window(WINDOW / 2, 2_500_000).verdict(40_000_000));
        // The stream is the bottleneck, but the rest arrives within a few hundred milliseconds.
        assert!(!window(Duration::ZERO, 2_500_000).verdict(2_000_000));
        // Nothing arrived at all through a window: the stream is no use as it is.
        assert!(window(Duration::ZERO, 0).verdict(40_000_000));
    }

    #[test]
    fn no_verdict_before_a_window_ends_and_each_window_starts_afresh() {
        let mut watch = SplitWatch::new();
        watch.arrived(1, Duration::ZERO);
        assert!(!watch.verdict(u64::MAX), "the window is not over");
        let mut watch = window(Duration::ZERO, 1000);
        assert!(watch.verdict(u64::MAX));
        assert_eq!(watch.bytes, 0);
        assert!(!watch.verdict(u64::MAX), "a new window has begun");
    }
}
