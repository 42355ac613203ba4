//! When one stream of a big blob is worth splitting into ranges over more connections: only when
//! the stream itself holds the download back. A registry on a fast link (or on this machine)
//! hands out bytes faster than hashing and extraction take them, and more connections there only
//! add requests, out-of-order writes and a read-back of every byte: measured on loopback, a
//! 48 MB layer pulled in 0.42 s over ranges and 0.34 s over one stream. A CDN capping each
//! connection, or a long round trip, leaves the download waiting for bytes instead: there more
//! connections multiply the rate.
//!
//! The stream is watched in windows of [`WINDOW`]: a window in which the download spent at least
//! [`NETWORK_BOUND`] of its time waiting for the next bytes (rather than for the sink: the disk,
//! the hash, the extraction) says the stream is the bottleneck; it is split when, at the rate of
//! that window, the rest of the blob would still take [`WORTH_SPLITTING`] or more.

use std::time::{Duration, Instant};

/// How long the stream is watched before each verdict.
pub(super) const WINDOW: Duration = Duration::from_millis(250);
/// The share of a window spent waiting for bytes that makes the stream the bottleneck.
const NETWORK_BOUND: f64 = 0.75;
/// The least time the rest of the blob must still take over one stream for more connections to
/// pay for their requests.
pub(super) const WORTH_SPLITTING: Duration = Duration::from_millis(500);

/// The watch over one stream's windows.
#[derive(Debug)]
pub(super) struct SplitWatch {
    started: Instant,
    waited: Duration,
    bytes: u64,
}

impl SplitWatch {
    /// A watch whose first window starts now.
    pub(super) fn new() -> SplitWatch {
        SplitWatch {
            started: Instant::now(),
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// `bytes` arrived after the download waited `waited` for them.
    pub(super) fn arrived(&mut self, bytes: u64, waited: Duration) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.waited = self.waited.saturating_add(waited);
    }

    /// At the end of a window: whether the stream was the bottleneck through it and `remaining`
    /// bytes at its rate would take long enough to split. A new window starts either way; before
    /// the end of one, `false`.
    pub(super) fn verdict(&mut self, remaining: u64) -> bool {
        let elapsed = self.started.elapsed();
        if elapsed < WINDOW {
            return false;
        }
        let waiting = self.waited.as_secs_f64() / elapsed.as_secs_f64();
        let rate = self.bytes as f64 / elapsed.as_secs_f64();
        *self = SplitWatch::new();
        waiting >= NETWORK_BOUND
            && (rate <= 0.0 || remaining as f64 / rate >= WORTH_SPLITTING.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(waited: Duration, bytes: u64) -> SplitWatch {
        SplitWatch {
            started: Instant::now() - WINDOW,
            waited,
            bytes,
        }
    }

    #[test]
    fn only_a_stream_that_keeps_the_download_waiting_is_split() {
        // 250 ms of waiting for 2.5 MB: 10 MB/s, the rest (40 MB) takes 4 s.
        assert!(window(WINDOW, 2_500_000).verdict(40_000_000));
        // The same bytes with the sink doing the waiting: the stream keeps up.
        assert!(!window(WINDOW / 10, 2_500_000).verdict(40_000_000));
        // Network-bound, but the rest arrives within a few hundred milliseconds anyway.
        assert!(!window(WINDOW, 2_500_000).verdict(2_000_000));
        // Nothing arrived at all through a window: the stream is no use as it is.
        assert!(window(WINDOW, 0).verdict(40_000_000));
    }

    #[test]
    fn no_verdict_before_a_window_ends_and_each_window_starts_afresh() {
        let mut watch = SplitWatch::new();
        watch.arrived(1, WINDOW);
        assert!(!watch.verdict(u64::MAX), "the window is not over");
        let mut watch = window(WINDOW, 1000);
        assert!(watch.verdict(u64::MAX));
        assert_eq!(watch.bytes, 0);
        assert!(!watch.verdict(u64::MAX), "a new window has begun");
    }
}
