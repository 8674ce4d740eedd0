//! Small building blocks that several of Cairn's layers use, each written
//! once, here, so that no layer keeps a copy of its own:
//!
//! - [`rng`]: the one seeded random generator (SplitMix64). Simulations and
//!   generative tests replay a run from a seed only if every draw comes from
//!   a generator that they seeded.
//! - [`backoff`]: capped exponential delays between retries, with optional
//!   jitter.
//! - [`files`]: replacing a file whole, durably; reading one with a bound.
//! - [`process`]: processes as the agent and the cloud see them: which pids
//!   may be signalled, whether one lives, the node a host directory holds,
//!   pid files, signals to a process or its group.
//! - [`browser`]: the checks that keep web pages from using Cairn's HTTP
//!   APIs through a user's browser (Host, Origin, Content-Type).
//! - [`secret`]: random tokens, kept in owner-only files.
//! - [`lock`]: the one rule for poisoned locks.
//! - [`now_ms`]: wall-clock time as Cairn records it.
//! - [`cluster_version`]: which releases may run a cluster together.
//! - [`version`]: the version this binary is, from the stamp in its data
//!   (which tests may rewrite to make a second version of one build).
//!
//! Nothing here knows about consensus, storage or the network; everything
//! here is small enough to read at once.

pub mod backoff;
pub mod browser;
pub mod cluster_version;
pub mod files;
pub mod process;
pub mod rng;
pub mod secret;
pub mod version;

pub use backoff::Backoff;
pub use rng::Rng;
pub use version::version;

/// Now, in whole milliseconds since the Unix epoch (0 if the clock is set
/// before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Locks `mutex`, poisoned or not: Cairn's one rule for lock poisoning.
///
/// A lock is poisoned only when a thread panicked while it held the guard.
/// Every critical section in Cairn assigns, copies, or pushes and pops whole
/// values, and calls nothing that could panic between two statements that
/// must go together, so what a poisoned lock guards is as consistent as
/// after any other critical section: the thread that panicked reported its
/// bug, and the rest of the process carries on rather than failing every
/// later call on that lock. (A panic that leaves state that cannot be trusted
/// is a fatal error of its own, handled where it happens: OmniPaxos's
/// storage panics stop the node, which restarts from disk.)
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
