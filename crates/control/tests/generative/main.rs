//! Generative tests of the reconciler (the generative tier of
//! docs/architecture.md): random sequences of desired states against a
//! simulated cloud, agents and data plane, with faults injected (see
//! `world.rs`).
//!
//! For each desired state of a case: a safety phase with faults, then a
//! liveness phase without, which must end at the desired state within one
//! reconciliation loop's budget; no step may cost the quorum at any time;
//! the sinks hold every backup asked for, none the control plane does not
//! know of, and no more scheduled ones than `keep`;
//! and the final desired state, reached again from nothing by a second path
//! (bootstrap straight to it), must give an equivalent cluster.
//!
//! A failing case is written as JSON (seed, faults, first hosts, desired
//! states) into `tests/regressions/`, and every run replays every case there.
//!
//! - `CAIRN_CONTROL_CASES=N` (default 700, about 10,000 desired states) and
//!   `CAIRN_CONTROL_FIRST_SEED` choose the cases;
//! - `CAIRN_CONTROL_SEED=N` runs one case and prints its turns.

mod world;

use std::path::PathBuf;

use cairn_control::desired::{validate, Backup, BackupSchedule, DesiredState};
use cairn_util::version;
use serde::{Deserialize, Serialize};
use world::{seeded, Counts, Faults, Rng, World};

/// Cases per run unless `CAIRN_CONTROL_CASES` says otherwise.
const CASES_DEFAULT: u64 = 700;
/// Desired states per case: 10 to this.
const DESIRED_PER_CASE_MAX: u64 = 20;
/// Loops of the safety phase (faults on) per desired state.
const SAFETY_LOOPS_MAX: u64 = 30;
/// Loops the liveness phase may take to reach a desired state: one
/// reconciliation loop's budget, far above what a scale of 1 to 7 needs.
const LIVENESS_LOOPS_MAX: u64 = 400;
/// Backup sinks the generator draws from.
const SINKS: [&str; 2] = ["nightly", "manual"];
/// Zones the generator draws from.
const ZONES: [&str; 4] = ["zone-a", "zone-b", "zone-c", "zone-d"];

/// One generative case, as stored in the regression corpus.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Case {
    seed: u64,
    faults: Faults,
    /// The hosts that exist at the start (`cairn up`'s bootstrap host).
    hosts: Vec<(String, String)>,
    desired: Vec<DesiredState>,
    /// Why it was kept (the failure it found).
    #[serde(default)]
    note: String,
}

fn generate(seed: u64) -> Case {
    let mut rng = seeded(seed.wrapping_mul(31).wrapping_add(7));
    let count = 10 + rng.below(DESIRED_PER_CASE_MAX - 9);
    let mut desired = Vec::new();
    let mut state = DesiredState::default_with_id(1);
    state.zones = pick_zones(&mut rng);
    state.replicas = [1, 3, 5][rng.below(3) as usize];
    // Some clusters start from a backup (carried over by every later state).
    if rng.below(4) == 0 {
        state.restore_from = Some("/srv/backups/manual/b1".into());
    }
    for id in 1..=count {
        state.id = id;
        if id > 1 {
            mutate(&mut rng, &mut state);
        }
        assert!(validate(&state).is_ok(), "generated an invalid state: {state:?}");
        desired.push(state.clone());
    }
    let faults = Faults {
        action_fails: rng.below(150),
        host_dies: rng.below(40),
        leader_dies: rng.below(60),
        stale_observation: rng.below(150),
        lost_observation: rng.below(60),
    };
    let hosts = vec![("host-1".to_string(), desired[0].zones[0].clone())];
    Case { seed, faults, hosts, desired, note: String::new() }
}

fn pick_zones(rng: &mut Rng) -> Vec<String> {
    let count = 1 + rng.below(ZONES.len() as u64) as usize;
    let start = rng.below(ZONES.len() as u64) as usize;
    (0..count).map(|i| ZONES[(start + i) % ZONES.len()].to_string()).collect()
}

fn mutate(rng: &mut Rng, state: &mut DesiredState) {
    if !state.running {
        // A stopped cluster reconciles nothing until it runs again.
        state.running = true;
        return;
    }
    match rng.below(14) {
        // Another version (installed from artifacts), or back to the
        // agents' own (kept installed, or their own binary).
        13 => {
            if state.version == version() {
                state.version = "9.9.9".into();
                state.artifacts = Some("/srv/releases".into());
            } else {
                state.version = version().into();
                state.artifacts = None;
            }
        }
        0..=3 => state.replicas = [1, 3, 5, 7][rng.below(4) as usize],
        4 => state.zones = pick_zones(rng),
        5 | 6 => state.restart_generation = state.id,
        7 => state.running = false,
        8 => state.allow_temporary_hosts = !state.allow_temporary_hosts,
        9 => {
            state.replicas = [1, 3, 5][rng.below(3) as usize];
            state.zones = pick_zones(rng);
        }
        // Backups on demand: one more, or one fewer.
        10 | 11 if state.backups.is_empty() || rng.below(2) == 0 => {
            let name = format!("b{}", rng.below(6));
            let sink = SINKS[rng.below(SINKS.len() as u64) as usize].to_string();
            if !state.backups.iter().any(|b| b.name == name) {
                state.backups.push(Backup { name, sink });
            }
        }
        10 | 11 => {
            let gone = rng.below(state.backups.len() as u64) as usize;
            state.backups.remove(gone);
        }
        // A schedule (every 1 to 3 minutes: several slots pass in one
        // liveness phase), changed, or dropped.
        _ => {
            state.backup_schedule = match rng.below(3) {
                0 => None,
                _ => Some(BackupSchedule {
                    every_s: 60 * (1 + rng.below(3)),
                    keep: 1 + rng.below(3) as u32,
                    sink: SINKS[rng.below(SINKS.len() as u64) as usize].to_string(),
                }),
            }
        }
    }
}

/// Runs a case; `Err` names the desired state and what went wrong.
fn run(case: &Case, trace: bool, counts: &mut Counts) -> Result<(), String> {
    let mut world = World::new(case.seed, case.faults, &case.hosts);
    world.trace = trace;
    for desired in &case.desired {
        world.offered = Some(desired.clone());
        let safety = world.rng.below(SAFETY_LOOPS_MAX);
        for _ in 0..safety {
            world.tick(true).map_err(|e| format!("desired state {}: {e}", desired.id))?;
        }
        let mut reached = false;
        for _ in 0..LIVENESS_LOOPS_MAX {
            world.tick(false).map_err(|e| format!("desired state {}: {e}", desired.id))?;
            if world.at(desired).is_ok() {
                reached = true;
                break;
            }
        }
        if trace {
            println!("desired {} reached={reached}: {:?}", desired.id, world.fingerprint());
        }
        if !reached {
            let why = world.at(desired).err().unwrap_or_default();
            return Err(format!(
                "desired state {} not reached in {LIVENESS_LOOPS_MAX} loops: {why}",
                desired.id
            ));
        }
    }
    add_counts(counts, &world.counts);
    // A second path: from nothing straight to the last desired state.
    let last = case.desired.last().cloned().ok_or("a case without desired states")?;
    if last.running {
        let mut direct = World::new(case.seed ^ 1, case.faults, &case.hosts);
        direct.offered = Some(DesiredState { id: 1, ..last.clone() });
        for _ in 0..LIVENESS_LOOPS_MAX {
            direct.tick(false)?;
        }
        if direct.fingerprint() != world.fingerprint() {
            return Err(format!(
                "two paths to desired state {} differ: {:?} and {:?}",
                last.id,
                world.fingerprint(),
                direct.fingerprint()
            ));
        }
    }
    Ok(())
}

fn add_counts(total: &mut Counts, one: &Counts) {
    total.turns += one.turns;
    total.steps += one.steps;
    total.action_failed += one.action_failed;
    total.host_died += one.host_died;
    total.leader_died += one.leader_died;
    total.stale += one.stale;
    total.lost += one.lost;
    total.guard_refused += one.guard_refused;
}

fn regressions_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/regressions")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Random desired-state sequences with faults: every state is reached, no
/// step costs the quorum, and two paths agree. A failure is kept as a
/// regression case.
#[test]
fn random_desired_states_are_reached_safely() {
    if let Ok(seed) = std::env::var("CAIRN_CONTROL_SEED") {
        let seed: u64 = seed.parse().expect("CAIRN_CONTROL_SEED is a number");
        let case = generate(seed);
        println!("{}", serde_json::to_string_pretty(&case).unwrap_or_default());
        let result = run(&case, true, &mut Counts::default());
        assert!(result.is_ok(), "seed {seed}: {result:?}");
        return;
    }
    let cases = env_u64("CAIRN_CONTROL_CASES", CASES_DEFAULT);
    let first = env_u64("CAIRN_CONTROL_FIRST_SEED", 0);
    let mut counts = Counts::default();
    let mut desired_states = 0;
    let mut failures = Vec::new();
    for seed in first..first + cases {
        let case = generate(seed);
        desired_states += case.desired.len();
        if let Err(error) = run(&case, false, &mut counts) {
            let kept = Case { note: error.clone(), ..case };
            let path = regressions_dir().join(format!("seed-{seed}.json"));
            let written = std::fs::create_dir_all(regressions_dir()).and_then(|()| {
                std::fs::write(&path, serde_json::to_string_pretty(&kept).unwrap_or_default())
            });
            failures.push(format!(
                "seed {seed}: {error}\n  kept in {} ({written:?}); replay: CAIRN_CONTROL_SEED={seed} \
                 cargo test --workspace --test generative -- --nocapture",
                path.display()
            ));
        }
    }
    println!(
        "generative: {cases} cases, {desired_states} desired states, {} turns, {} steps; faults: \
         {} actions failed, {} hosts died, {} leader agents died mid-step, {} stale and {} lost \
         observations; {} steps refused by their check against a fresh look",
        counts.turns,
        counts.steps,
        counts.action_failed,
        counts.host_died,
        counts.leader_died,
        counts.stale,
        counts.lost,
        counts.guard_refused
    );
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
}

/// Every case of the regression corpus still passes.
#[test]
fn regression_corpus_replays() {
    let Ok(entries) = std::fs::read_dir(regressions_dir()) else { return };
    let mut failures = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let case: Case = match serde_json::from_str(&text) {
            Ok(case) => case,
            Err(e) => {
                failures.push(format!("{}: not a case: {e}", path.display()));
                continue;
            }
        };
        if let Err(error) = run(&case, false, &mut Counts::default()) {
            failures.push(format!("{}: {error}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
