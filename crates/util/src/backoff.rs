//! Delays between retries: capped exponential backoff, optionally jittered.
//!
//! The ceiling starts at the initial delay and doubles with every delay
//! taken, up to the cap; [`Backoff::reset`] brings it back after a success
//! (or after a run long enough to count as one). The first
//! [`with_free_retries`](Backoff::with_free_retries) delays stay at the
//! initial value, for failures that are common once and rare twice (an
//! agent killed on purpose comes back at once). With jitter, each delay is
//! drawn uniformly from the upper half of its ceiling ("equal jitter"), from
//! a generator seeded by the caller, so that peers that failed at the same
//! instant do not retry in lockstep, while the wait still grows.
//!
//! Invariants: every delay is at most the cap and at least half the initial
//! delay; without jitter the delays are exact.

use crate::rng::Rng;

/// Retry delays in milliseconds. See the module docs.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    free_retries: u32,
    /// Delays taken since the last reset.
    taken: u32,
    jitter: Option<Rng>,
}

impl Backoff {
    /// Delays from `initial_ms`, doubling up to `max_ms`, without jitter.
    pub fn new(initial_ms: u64, max_ms: u64) -> Backoff {
        assert!(0 < initial_ms && initial_ms <= max_ms, "backoff bounds {initial_ms}..{max_ms}");
        Backoff { initial_ms, max_ms, free_retries: 0, taken: 0, jitter: None }
    }

    /// The first `retries` delays stay at the initial delay.
    pub fn with_free_retries(mut self, retries: u32) -> Backoff {
        self.free_retries = retries;
        self
    }

    /// Each delay drawn from the upper half of its ceiling, from a generator
    /// seeded with `seed`: the same seed draws the same delays.
    pub fn with_jitter(mut self, seed: u64) -> Backoff {
        self.jitter = Some(Rng::new(seed));
        self
    }

    /// The delay before the next attempt; later delays grow.
    pub fn next_delay_ms(&mut self) -> u64 {
        let ceiling_ms = self.ceiling_ms();
        self.taken = self.taken.saturating_add(1);
        let delay_ms = match &mut self.jitter {
            None => ceiling_ms,
            Some(rng) => {
                let half_ms = ceiling_ms / 2;
                ceiling_ms - half_ms + rng.below(half_ms + 1)
            }
        };
        assert!(delay_ms <= self.max_ms && delay_ms >= self.initial_ms / 2);
        delay_ms
    }

    /// The next delay's ceiling (the delay itself, without jitter).
    pub fn ceiling_ms(&self) -> u64 {
        let doublings = self.taken.saturating_sub(self.free_retries).min(63);
        self.initial_ms.saturating_mul(1u64 << doublings).min(self.max_ms)
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.taken = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_and_reset() {
        let mut b = Backoff::new(100, 1_000);
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay_ms()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        b.reset();
        assert_eq!(b.next_delay_ms(), 100);
    }

    #[test]
    fn free_retries_wait_the_initial_delay() {
        let mut b = Backoff::new(1_000, 30_000).with_free_retries(2);
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay_ms()).collect();
        assert_eq!(delays, [1_000, 1_000, 1_000, 2_000, 4_000, 8_000, 16_000]);
    }

    /// Jittered delays lie in the upper half of their ceiling, and one seed
    /// draws one sequence.
    #[test]
    fn jitter_stays_in_the_upper_half_and_replays() {
        let draw = |seed| {
            let mut b = Backoff::new(50, 2_000).with_jitter(seed);
            (0..20).map(|_| b.next_delay_ms()).collect::<Vec<_>>()
        };
        let delays = draw(7);
        let mut ceiling = 50;
        for delay in &delays {
            assert!(ceiling / 2 <= *delay && *delay <= ceiling, "{delay} vs {ceiling}");
            ceiling = (ceiling * 2).min(2_000);
        }
        assert_eq!(delays, draw(7));
        assert_ne!(delays, draw(8));
    }

    #[test]
    fn a_long_run_of_failures_never_overflows() {
        let mut b = Backoff::new(1, u64::MAX);
        for _ in 0..200 {
            b.next_delay_ms();
        }
        assert_eq!(b.ceiling_ms(), 1 << 63);
    }
}
