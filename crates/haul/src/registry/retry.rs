//! How long a request waits between its attempts.
//!
//! A registry's `Retry-After` is obeyed up to `max-retry-after` (60 s by default); asking for more
//! fails the request at once with an error naming the wait, rather than parking the pull for as
//! long as a hostile or overloaded registry likes (`Retry-After: 999999`, or an HTTP date in the
//! year 9999). Without `Retry-After` the caller's backoff applies. Either way one request (a blob
//! download with all its attempts) waits at most five times `max-retry-after` in all, however many
//! attempts `max-download-attempts` allows.

use std::time::Duration;

use super::error::RegistryError;
use super::settings::RegistrySettings;

/// The waits of one request across its attempts.
#[derive(Debug, Clone)]
pub struct RetryWaits {
    limit: Duration,
    budget: Duration,
    waited: Duration,
}

impl RetryWaits {
    /// No wait yet, with `settings`' `max-retry-after` and wait budget.
    pub fn new(settings: &RegistrySettings) -> Self {
        RetryWaits {
            limit: settings.max_retry_after,
            budget: settings.retry_wait_budget(),
            waited: Duration::ZERO,
        }
    }

    /// How long to wait before the next attempt after `err` from `host`: what the registry asked
    /// for, else `backoff`. Fails when the registry asks for more than haul waits, or when this
    /// wait would take the request past its budget (the error then carries `err` as its source).
    pub fn delay(
        &mut self,
        host: &str,
        err: RegistryError,
        backoff: Duration,
    ) -> Result<Duration, RegistryError> {
        let delay = match err.retry_after() {
            Some(asked) if asked > self.limit => {
                return Err(RegistryError::RetryAfterTooLong {
                    host: host.to_owned(),
                    requested: asked,
                    limit: self.limit,
                });
            }
            Some(asked) => asked,
            None => backoff,
        };
        let total = self.waited.saturating_add(delay);
        if total > self.budget {
            return Err(RegistryError::WaitedTooLong {
                waited: self.waited,
                source: Box::new(err),
            });
        }
        self.waited = total;
        tracing::debug!(%host, error = %err, wait = ?delay, "waiting before the next attempt");
        Ok(delay)
    }

    /// Time spent waiting so far.
    #[cfg(test)]
    fn waited(&self) -> Duration {
        self.waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(secs: u64) -> RegistryError {
        RegistryError::TooManyRequests {
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(secs)),
        }
    }

    fn transient() -> RegistryError {
        RegistryError::Transport {
            host: "r".into(),
            detail: "reset".into(),
        }
    }

    #[test]
    fn a_retry_after_beyond_the_limit_fails_naming_the_wait() {
        let mut waits = RetryWaits::new(&RegistrySettings::default());
        for secs in [61, 999_999, u64::MAX] {
            let err = waits
                .delay("r.example", asking(secs), Duration::ZERO)
                .unwrap_err();
            assert!(
                matches!(err, RegistryError::RetryAfterTooLong { requested, .. } if requested.as_secs() == secs)
            );
            assert_eq!(
                err.to_string(),
                format!("r.example asked to retry after {secs} s, more than haul waits (60 s)")
            );
        }
        assert_eq!(waits.waited(), Duration::ZERO);
        assert_eq!(
            waits.delay("r", asking(60), Duration::ZERO).unwrap(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn waits_add_up_to_a_bounded_budget() {
        let mut waits = RetryWaits::new(&RegistrySettings::default());
        // 5 × 60 s, then the next ask is refused whatever its size.
        for _ in 0..5 {
            waits.delay("r", asking(60), Duration::ZERO).unwrap();
        }
        let err = waits.delay("r", asking(1), Duration::ZERO).unwrap_err();
        assert!(
            matches!(err, RegistryError::WaitedTooLong { waited, .. } if waited.as_secs() == 300)
        );
        // Backoff counts too, and saturates instead of overflowing.
        let mut waits = RetryWaits::new(&RegistrySettings::default());
        assert!(waits.delay("r", transient(), Duration::MAX).is_err());
        assert_eq!(
            waits
                .delay("r", transient(), Duration::from_secs(30))
                .unwrap(),
            Duration::from_secs(30)
        );
    }
}
