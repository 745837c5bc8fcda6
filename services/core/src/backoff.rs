//! Exponential back-off, the one retry delay of every loop that waits for
//! something outside the process (NATS, the store, a full queue).

use std::time::Duration;

use crate::shutdown::{sleep_or_cancel, CancellationToken};

/// A delay that starts at `first` and doubles after each wait, up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first` (at least 1 ms) and never waits longer than `max`
    /// (raised to `first` if smaller).
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.max(Duration::from_millis(1));
        Self { first, max: max.max(first), next: first }
    }

    /// The delay the next wait will take (for log lines that say it).
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// Returns the delay to wait now and doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for the next delay; false if `shutdown` fired meanwhile.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        sleep_or_cancel(shutdown, self.next_delay()).await
    }

    /// Sleeps for the next delay, whatever happens meanwhile.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn a_ceiling_below_the_first_delay_is_the_first_delay() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_millis(10));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_wait_ends_early_on_shutdown() {
        let token = CancellationToken::new();
        token.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!b.wait(&token).await);
    }
}
