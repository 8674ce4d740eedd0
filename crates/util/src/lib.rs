//! Small building blocks that several of Cairn's layers use, each written
//! once, here, so that no layer keeps a copy of its own:
//!
//! - [`rng`]: the one seeded random generator (SplitMix64). Simulations and
//!   generative tests replay a run from a seed only if every draw comes from
//!   a generator that they seeded.
//! - [`backoff`]: capped exponential delays between retries, with optional
//!   jitter.
//! - [`process`]: processes as the agent and the cloud see them: which pids
//!   may be signalled, whether one lives, the node a host directory holds,
//!   pid files, signals to a process or its group.
//! - [`VERSION`]: the version every crate of the workspace shares.
//!
//! Nothing here knows about consensus, storage or the network; everything
//! here is small enough to read at once.

pub mod backoff;
pub mod process;
pub mod rng;

pub use backoff::Backoff;
pub use rng::Rng;

/// The version of Cairn this binary is (the workspace's one version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
