//! Redial delays: exponential, capped, with jitter from a seeded generator.
//!
//! The delay doubles from the initial value up to the cap with every delay
//! taken, and returns to the initial value when the link resets it (after a
//! connection that held; see the link). Each delay is drawn uniformly from its upper half ("equal
//! jitter"), so nodes that lost a peer at the same instant do not redial in
//! lockstep, while the wait still grows.
//!
//! The jitter comes from SplitMix64 seeded by the pair of node ids: the same
//! pair always draws the same sequence, and no global RNG is touched.

use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    next_ms: u64,
    rng: SplitMix64,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64, seed: u64) -> Backoff {
        assert!(0 < initial_ms && initial_ms <= max_ms, "backoff bounds");
        Backoff { initial_ms, max_ms, next_ms: initial_ms, rng: SplitMix64(seed) }
    }

    /// The delay before the next attempt; later delays grow.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling_ms = self.next_ms;
        self.next_ms = ceiling_ms.saturating_mul(2).min(self.max_ms);
        let half_ms = ceiling_ms / 2;
        let delay_ms = ceiling_ms - half_ms + self.rng.next() % (half_ms + 1);
        assert!(delay_ms <= ceiling_ms);
        Duration::from_millis(delay_ms)
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next_ms = self.initial_ms;
    }
}

/// A tiny, good-enough generator for jitter (Steele, Lea, Flood 2014).
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Delays grow to the cap, stay within their upper half, and start over
    // after a reset.
    #[test]
    fn delays_double_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(50, 2_000, 42);
        let mut ceiling = 50;
        for _ in 0..10 {
            let delay = backoff.next_delay().as_millis() as u64;
            assert!(ceiling / 2 <= delay && delay <= ceiling, "{delay} vs {ceiling}");
            ceiling = (ceiling * 2).min(2_000);
        }
        backoff.reset();
        assert!(backoff.next_delay().as_millis() <= 50);
    }

    // The same seed draws the same delays.
    #[test]
    fn same_seed_same_delays() {
        let draw = |seed| {
            let mut b = Backoff::new(50, 2_000, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
    }
}
