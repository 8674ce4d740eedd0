//! The simulation tier: many seeds, each a whole cluster under faults, each
//! checked for linearizability, exactly-once application, agreement of the
//! replicas and convergence after healing.
//!
//! - `CAIRN_SIM_SEEDS=N` runs seeds `0..N` (`CAIRN_SIM_FIRST_SEED` moves the
//!   start); the default keeps CI short.
//! - `CAIRN_SIM_SEED=S` runs one seed, printing its report: the replay of a
//!   failure.
//!
//! A failure prints the seed, its parameters, what went wrong, and the one
//! command that replays it.

use std::collections::BTreeMap;
use std::time::Instant;

use cairn_sim::cluster::{run, run_with, FaultKind, Planted};

/// Seeds run by default.
const SEEDS_DEFAULT: u64 = 300;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")))
}

fn replay_command(seed: u64) -> String {
    format!("CAIRN_SIM_SEED={seed} cargo test --workspace --test sim -- --nocapture")
}

#[test]
fn simulated_clusters_keep_their_promises() {
    let seeds: Vec<u64> = match env_u64("CAIRN_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("CAIRN_SIM_FIRST_SEED").unwrap_or(0);
            let count = env_u64("CAIRN_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
            (first..first + count).collect()
        }
    };
    let started = Instant::now();
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let (mut operations, mut unknown, mut unchecked, mut snapshots, mut ticks) = (0, 0, 0, 0, 0);
    let mut dropped = 0;
    for &seed in &seeds {
        let report = run(seed);
        if seeds.len() == 1 {
            eprintln!("{report}");
        }
        assert!(report.ok(), "{report}\nreplay with:\n  {}\n", replay_command(seed));
        for (kind, n) in &report.faults {
            *faults.entry(*kind).or_default() += n;
        }
        operations += report.operations;
        unknown += report.unknown_outcomes;
        unchecked += report.unchecked_keys;
        snapshots += report.snapshots_installed;
        ticks += report.ticks;
        dropped += report.network.dropped;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} seeds in {:.1} s ({:.1} seeds/s): {ticks} ticks, {operations} operations \
         ({unknown} unknown), {unchecked} keys unchecked (budget), {snapshots} snapshots \
         installed, {dropped} messages dropped, faults {faults:?}",
        seeds.len(),
        elapsed.as_secs_f64(),
        seeds.len() as f64 / elapsed.as_secs_f64()
    );
}

/// Seeds that found bugs, kept as regressions: run on every test run.
/// - 27: a stale `AcceptSync` delivered after a newer one put a follower's
///   log out of line (fixed in the network model: links never reorder, as
///   the transport guarantees);
/// - 62: a message lost mid-stream with no reconnection put a follower's log
///   out of line (fixed in the model: loss breaks the connection and both
///   ends resynchronise, as with the transport);
/// - 90: OmniPaxos compacted every log past entries no state machine had
///   applied (fixed: entries not yet applied stay on disk, and peers serve
///   them);
/// - 180: a state wiped after an interrupted install (a checker fix);
/// - 184: entries applied over a half-installed snapshot (fixed: an install
///   that broke off is finished with a whole snapshot first).
const REGRESSION_SEEDS: [u64; 5] = [27, 62, 90, 180, 184];

#[test]
fn seeds_that_found_bugs_stay_fixed() {
    for seed in REGRESSION_SEEDS {
        let report = run(seed);
        assert!(report.ok(), "{report}\nreplay with:\n  {}\n", replay_command(seed));
    }
}

/// A liveness failure the simulator found and that is not fixed yet: after
/// healing, one node keeps believing it leads an old ballot, and stays
/// behind. Run with `--ignored` to reproduce.
#[test]
#[ignore = "known open liveness bug, seed 412"]
fn known_open_liveness_bug_seed_412() {
    let report = run(412);
    assert!(report.ok(), "{report}");
}

#[test]
fn a_seed_replays_exactly() {
    let first = run(11);
    let second = run(11);
    assert!(first.ok(), "{first}");
    assert_eq!(first.trace, second.trace, "the same seed gave two traces");
    assert_eq!(first.operations, second.operations);
    assert_eq!(first.ticks, second.ticks);
    assert_eq!(first.faults, second.faults);
    let other = run(12);
    assert_ne!(first.trace, other.trace, "two seeds gave one trace");
}

/// The simulator earns its keep: with reads answered from local state while
/// claiming to be linearizable (a bug planted behind a test-only switch), some
/// seed among the first few shows a history that is not linearizable.
#[test]
fn a_planted_stale_read_bug_is_caught() {
    let seeds = env_u64("CAIRN_SIM_PLANTED_SEEDS").unwrap_or(SEEDS_DEFAULT);
    for seed in 0..seeds {
        let report = run_with(seed, Planted::StaleReads);
        if report.violations.iter().any(|v| v.contains("not linearizable")) {
            eprintln!("the planted bug was caught at seed {seed}:\n{report}");
            return;
        }
    }
    panic!("stale reads went unnoticed for {seeds} seeds");
}
