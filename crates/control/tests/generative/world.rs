//! A simulated cloud, agents and data plane for the reconciler, driven by one
//! seed: hosts appear and die, nodes start, join, restart and stop, and the
//! membership changes only with a quorum, as the real ones do. The leader
//! agent's turn is the executor the agents run (`execute::run_turn`: plan,
//! store, check, run, record, store); only its effects are simulated.
//!
//! Faults: an action fails (with or without having taken effect), a host
//! dies, the leader agent dies mid-step (its step may or may not have taken
//! effect, and nothing after it is recorded), an observation is stale (the
//! previous loop's) or partly lost (an agent does not answer).
//!
//! Checks, as it runs: no step of the control plane leaves fewer members
//! serving than a majority when a majority served before; no host holding a
//! member is deleted; a removed node's host is deleted only once every
//! member caught up.

use std::collections::{BTreeMap, BTreeSet};

use cairn_control::desired::DesiredState;
use cairn_control::execute::{now, run_turn, Effects, Outcome, Turned};
use cairn_control::model::{
    majority, ControlState, HostCondition, HostObs, NodeObs, NodeProcess, Observed, Step,
};
use cairn_control::status::ReconcileState;
use cairn_util::version;
use serde::{Deserialize, Serialize};

/// Keeps only a violation of an effect's result: a step that failed on its
/// own is what the fault meant.
fn violation(result: Result<(), String>) -> Result<(), String> {
    match result {
        Err(e) if e.starts_with("violation") => Err(e),
        _ => Ok(()),
    }
}

pub use cairn_util::Rng;

/// A leader's turn acting on the simulated world: the executor the agents
/// run ([`run_turn`]), over effects that answer at once and fail as the
/// faults say.
struct Leading<'a> {
    world: &'a mut World,
    leader_host: String,
    faults_on: bool,
    /// A step's effect broke what must hold: the world's verdict, not a
    /// failed step.
    violation: Option<String>,
}

/// Why a simulated effect failed.
#[derive(Debug)]
enum Failed {
    /// The leader's agent died: nothing it does after this lands.
    LeaderDied,
    /// The fault plan failed the step (after it maybe did its work).
    Injected,
    /// The step failed on its own.
    Step(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::LeaderDied => write!(f, "the leader died"),
            Failed::Injected => write!(f, "injected failure"),
            Failed::Step(e) => write!(f, "{e}"),
        }
    }
}

impl Leading<'_> {
    /// Applies a step's effect, keeping a violation aside.
    fn apply(&mut self, step: &Step) -> Result<(), String> {
        let result = self.world.apply(step);
        if let Err(e) = violation(result.clone()) {
            self.violation.get_or_insert(e);
        }
        result
    }

    fn died(&self) -> bool {
        self.world.hosts.get(&self.leader_host).is_some_and(|h| h.agent_down_loops > 0)
    }
}

impl Effects for Leading<'_> {
    type Error = Failed;

    async fn look(&mut self) -> Result<Observed, Failed> {
        Ok(self.world.observe_fresh())
    }

    async fn run(&mut self, step: &Step, _desired: &DesiredState) -> Result<(), Failed> {
        let world = &mut *self.world;
        if self.faults_on && world.rng.per_mille(world.faults.leader_dies) {
            world.counts.leader_died += 1;
            if world.rng.below(2) == 0 {
                let _ = self.apply(step);
            }
            let world = &mut *self.world;
            let loops = 2 + world.rng.below(3) as u32;
            if let Some(host) = world.hosts.get_mut(&self.leader_host) {
                host.agent_down_loops = loops;
            }
            return Err(Failed::LeaderDied);
        }
        if self.faults_on && world.rng.per_mille(world.faults.action_fails) {
            world.counts.action_failed += 1;
            if world.rng.below(2) == 0 {
                let _ = self.apply(step);
            }
            return Err(Failed::Injected);
        }
        self.apply(step).map_err(Failed::Step)
    }

    async fn store(
        &mut self,
        control: &ControlState,
        _pending_id: Option<u64>,
        after_step: bool,
    ) -> Result<(), Failed> {
        if self.died() {
            return Err(Failed::LeaderDied);
        }
        self.world.control = control.clone();
        if self.world.trace && !after_step {
            println!(
                "  turn {} leader {}: {:?} {}",
                self.world.counts.turns, self.leader_host, control.state, control.message
            );
        }
        Ok(())
    }
}

/// The generator of a case or world: the one seeded generator, its seed
/// mixed as the cases recorded under `tests/regressions/` expect.
pub fn seeded(seed: u64) -> Rng {
    Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15)
}

/// How often faults strike, per loop, in thousandths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    pub action_fails: u64,
    pub host_dies: u64,
    pub leader_dies: u64,
    pub stale_observation: u64,
    pub lost_observation: u64,
}

/// What was injected, by kind.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub turns: u64,
    pub steps: u64,
    pub action_failed: u64,
    pub host_died: u64,
    pub leader_died: u64,
    pub stale: u64,
    pub lost: u64,
    pub guard_refused: u64,
}

#[derive(Clone, Debug)]
struct SimNode {
    id: u64,
    process: NodeProcess,
    generation: u64,
    /// The version it runs (a new node runs the desired one).
    version: String,
    /// Loops until a starting node runs.
    starting_loops: u32,
}

#[derive(Clone, Debug)]
struct SimHost {
    zone: String,
    failed: bool,
    /// Loops until a restarting agent answers again (0: it answers).
    agent_down_loops: u32,
    node: Option<SimNode>,
    /// The version its node ran before the one it runs (kept installed).
    installed: Option<String>,
}

/// The simulated clock at the start: 2026-12-06 17:59:00 UTC, a minute
/// before a six-hour slot.
const START_MS: u64 = 1_796_579_940_000;
/// The simulated clock's step per loop (the agents' loop).
const LOOP_MS: u64 = 500;

/// The simulated world.
pub struct World {
    hosts: BTreeMap<String, SimHost>,
    members: BTreeSet<u64>,
    joining: BTreeSet<u64>,
    /// Loops until every member has applied through the configuration's
    /// first index.
    catch_up_loops: u32,
    /// The system table (readable and writable only with a quorum).
    control: ControlState,
    last_observation: Option<Observed>,
    pub rng: Rng,
    pub faults: Faults,
    pub counts: Counts,
    /// The desired state the cloud serves.
    pub offered: Option<DesiredState>,
    /// The backups the sinks hold, as (sink, name).
    backups: BTreeSet<(String, String)>,
    /// The leader agent's clock, in milliseconds since the Unix epoch.
    now_ms: u64,
    /// Print every turn.
    pub trace: bool,
}

impl World {
    /// A new world with the hosts `cairn up` creates (each with an agent and
    /// no node).
    pub fn new(seed: u64, faults: Faults, hosts: &[(String, String)]) -> World {
        let mut world = World {
            hosts: BTreeMap::new(),
            members: BTreeSet::new(),
            joining: BTreeSet::new(),
            catch_up_loops: 0,
            control: ControlState::default(),
            last_observation: None,
            rng: seeded(seed),
            faults,
            counts: Counts::default(),
            offered: None,
            backups: BTreeSet::new(),
            now_ms: START_MS,
            trace: false,
        };
        for (name, zone) in hosts {
            world.hosts.insert(
                name.clone(),
                SimHost {
                    zone: zone.clone(),
                    failed: false,
                    agent_down_loops: 0,
                    node: None,
                    installed: None,
                },
            );
        }
        world
    }

    fn node_of(&self, id: u64) -> Option<(&String, &SimHost)> {
        self.hosts.iter().find(|(_, h)| h.node.as_ref().is_some_and(|n| n.id == id))
    }

    /// A member serves: its host lives, its node runs, and a majority of the
    /// members run (a node without a quorum in sight does not serve).
    fn running(&self, id: u64) -> bool {
        self.node_of(id).is_some_and(|(_, h)| {
            !h.failed && h.node.as_ref().is_some_and(|n| n.process == NodeProcess::Running)
        })
    }

    fn running_count(&self) -> usize {
        self.members.iter().filter(|&&id| self.running(id)).count()
    }

    fn has_quorum(&self) -> bool {
        !self.members.is_empty() && self.running_count() >= majority(self.members.len())
    }

    fn leader(&self) -> Option<u64> {
        if !self.has_quorum() {
            return None;
        }
        self.members.iter().copied().find(|&id| self.running(id))
    }

    /// The leader agent's host: beside the leader node, with a live agent.
    fn leader_host(&self) -> Option<String> {
        let (name, host) = self.node_of(self.leader()?)?;
        (host.agent_down_loops == 0).then(|| name.clone())
    }

    /// The world moves on by one loop: nodes finish starting, joiners join
    /// when a quorum can add them, restarting agents come back, agents wake
    /// stopped nodes when the cloud asks the cluster to run.
    fn advance(&mut self) {
        self.now_ms += LOOP_MS;
        let stopping = self.control.accepted.as_ref().is_some_and(|d| !d.running);
        let wake = self.offered.as_ref().is_some_and(|d| d.running) && stopping;
        // An agent whose node lost its quorum stops it when the node's own
        // copy of the control state says the cluster is to stop (a stop
        // step cut short by a failure then still completes).
        let quorum = self.has_quorum();
        for host in self.hosts.values_mut() {
            host.agent_down_loops = host.agent_down_loops.saturating_sub(1);
            if host.failed {
                continue;
            }
            if let Some(node) = &mut host.node {
                if node.process == NodeProcess::Starting {
                    node.starting_loops = node.starting_loops.saturating_sub(1);
                    if node.starting_loops == 0 {
                        node.process = NodeProcess::Running;
                    }
                }
                if host.agent_down_loops > 0 {
                    continue;
                }
                if wake && node.process == NodeProcess::Stopped {
                    node.process = NodeProcess::Starting;
                    node.starting_loops = 1;
                } else if stopping && !wake && !quorum && node.process != NodeProcess::Stopped {
                    node.process = NodeProcess::Stopped;
                }
            }
        }
        self.catch_up_loops = self.catch_up_loops.saturating_sub(1);
        if self.has_quorum() {
            let ready: Vec<u64> = self
                .joining
                .iter()
                .copied()
                .filter(|&id| {
                    self.node_of(id).is_some_and(|(_, h)| {
                        !h.failed
                            && h.node.as_ref().is_some_and(|n| n.process == NodeProcess::Running)
                    })
                })
                .collect();
            if let Some(&id) = ready.first() {
                // One change at a time, as the data plane orders them.
                self.joining.remove(&id);
                self.members.insert(id);
                self.catch_up_loops = 2;
            }
        }
    }

    fn observe(&mut self) -> Observed {
        if let Some(last) = &self.last_observation {
            if self.rng.per_mille(self.faults.stale_observation) {
                self.counts.stale += 1;
                return last.clone();
            }
        }
        let quorum = self.has_quorum();
        let mut hosts = BTreeMap::new();
        for (name, host) in &self.hosts {
            let lost = self.rng.per_mille(self.faults.lost_observation);
            if lost {
                self.counts.lost += 1;
            }
            let state = if host.failed {
                HostCondition::Failed
            } else if host.agent_down_loops > 0 || lost {
                HostCondition::Unreachable
            } else {
                HostCondition::Running
            };
            let node = (state == HostCondition::Running).then(|| match &host.node {
                None => NodeObs {
                    node_id: None,
                    process: NodeProcess::Absent,
                    healthy: false,
                    restart_generation: 0,
                    version: version().into(),
                },
                Some(n) => NodeObs {
                    node_id: Some(n.id),
                    process: n.process,
                    healthy: n.process == NodeProcess::Running
                        && (self.members.contains(&n.id) && quorum),
                    restart_generation: n.generation,
                    version: n.version.clone(),
                },
            });
            hosts.insert(
                name.clone(),
                HostObs { name: name.clone(), zone: host.zone.clone(), state, node },
            );
        }
        let observed = Observed {
            hosts,
            members: if quorum { self.members.iter().copied().collect() } else { Vec::new() },
            member_hosts: if quorum {
                self.members
                    .iter()
                    .filter_map(|&id| Some((id, self.node_of(id)?.0.clone())))
                    .collect()
            } else {
                BTreeMap::new()
            },
            members_caught_up: self.catch_up_loops == 0,
            leader: self.leader(),
            now_ms: self.now_ms,
            // The world never finalizes: every version runs the base one.
            cluster_version: None,
        };
        self.last_observation = Some(observed.clone());
        observed
    }

    /// One loop: the world advances, faults strike, and the leader agent (if
    /// any) takes its turn. Returns a violation, if one was seen.
    pub fn tick(&mut self, faults_on: bool) -> Result<(), String> {
        self.advance();
        if faults_on {
            self.maybe_kill_host();
        }
        self.counts.turns += 1;
        let Some(leader_host) = self.leader_host().or_else(|| self.bootstrap_host()) else {
            return Ok(());
        };
        let observed = if faults_on { self.observe() } else { self.observe_fresh() };
        if self.trace {
            let hosts: Vec<_> = observed
                .hosts
                .values()
                .map(|h| {
                    let node = h.node.as_ref().map(|n| (n.node_id, n.process, n.healthy));
                    format!("{}:{:?}:{node:?}", h.name, h.state)
                })
                .collect();
            println!("  turn {} members {:?} hosts {hosts:?}", self.counts.turns, observed.members);
        }
        let control = self.control.clone();
        let offered = self.offered.clone();
        // The agent checks a step against a fresh look unless it
        // bootstraps (no node to look at yet).
        let check = self.leader_host().is_some();
        let mut leading = Leading { world: self, leader_host, faults_on, violation: None };
        let turned = now(run_turn(&mut leading, &control, offered.as_ref(), &observed, check));
        if let Some(e) = leading.violation {
            return Err(e);
        }
        if let Ok(Turned { step: Some((_, outcome)), .. }) = turned {
            self.counts.steps += 1;
            if matches!(outcome, Outcome::Refused(_)) {
                self.counts.guard_refused += 1;
            }
        } else if turned.is_err() {
            // The leader died mid-step: its step was taken.
            self.counts.steps += 1;
        }
        Ok(())
    }

    /// Before any member exists, the agent of the first live host leads.
    fn bootstrap_host(&self) -> Option<String> {
        if !self.members.is_empty() {
            return None;
        }
        self.hosts
            .iter()
            .find(|(_, h)| !h.failed && h.agent_down_loops == 0)
            .map(|(n, _)| n.clone())
    }

    fn observe_fresh(&mut self) -> Observed {
        let faults = self.faults;
        self.faults = Faults { stale_observation: 0, lost_observation: 0, ..faults };
        let last = self.last_observation.take();
        let observed = self.observe();
        self.last_observation = last;
        self.faults = faults;
        observed
    }

    fn maybe_kill_host(&mut self) {
        // Until the first node runs, the bootstrap host is the cluster's
        // only agent: no host is special after bootstrap, but before it is.
        if self.members.is_empty() || !self.rng.per_mille(self.faults.host_dies) {
            return;
        }
        // Kill only what the cluster survives: a member while more than a
        // majority serve, or a host holding no member.
        let n = self.members.len();
        let spare_up = self.running_count() > majority(n.max(1));
        let names: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| !h.failed)
            .filter(|(_, h)| match &h.node {
                Some(node) if self.members.contains(&node.id) => spare_up && n > 1,
                _ => true,
            })
            .map(|(name, _)| name.clone())
            .collect();
        if names.is_empty() {
            return;
        }
        let name = &names[self.rng.below(names.len() as u64) as usize];
        if let Some(host) = self.hosts.get_mut(name) {
            host.failed = true;
            self.counts.host_died += 1;
        }
    }

    /// Applies a step's effect, checking that it keeps the quorum.
    fn apply(&mut self, step: &Step) -> Result<(), String> {
        let had_quorum = self.has_quorum();
        let generation = self.control.accepted.as_ref().map_or(0, |d| d.restart_generation);
        // A restore starts the first node as a start does (its data comes
        // from the backup, which the world does not model).
        let restore;
        let step = match step {
            Step::RestoreNode { host, node_id, .. } => {
                restore = Step::StartNode { host: host.clone(), node_id: *node_id, join: false };
                &restore
            }
            other => other,
        };
        match step {
            Step::CreateHost { host, zone } => match self.hosts.get(host) {
                Some(h) if h.zone != *zone => return Err(format!("{host} exists in {}", h.zone)),
                Some(_) => {}
                None => {
                    self.hosts.insert(
                        host.clone(),
                        SimHost {
                            zone: zone.clone(),
                            failed: false,
                            agent_down_loops: 1,
                            node: None,
                            installed: None,
                        },
                    );
                }
            },
            Step::StartNode { host, node_id, join } => {
                let members_empty = self.members.is_empty();
                // The executor moves the host to the desired version first.
                let (wanted, artifacts) =
                    self.control.accepted.as_ref().map_or((version().to_string(), None), |d| {
                        (d.version.clone(), d.artifacts.clone())
                    });
                let h = self.live_host(host)?;
                let current = h.node.as_ref().map_or(version().to_string(), |n| n.version.clone());
                if wanted != current
                    && wanted != version()
                    && artifacts.is_none()
                    && h.installed != Some(wanted.clone())
                {
                    return Err(format!(
                        "{wanted} is not installed on {host} and no artifacts named"
                    ));
                }
                match &mut h.node {
                    Some(n) if n.id != *node_id => {
                        return Err(format!("{host} holds node {}", n.id));
                    }
                    Some(n) => {
                        if n.process == NodeProcess::Stopped {
                            n.process = NodeProcess::Starting;
                            n.starting_loops = 1;
                            if n.version != wanted {
                                h.installed = Some(n.version.clone());
                                n.version = wanted;
                            }
                        }
                    }
                    None => {
                        h.node = Some(SimNode {
                            id: *node_id,
                            process: NodeProcess::Starting,
                            generation,
                            version: wanted,
                            starting_loops: 1,
                        });
                        if *join {
                            self.joining.insert(*node_id);
                        } else if members_empty {
                            self.members.insert(*node_id);
                        }
                    }
                }
            }
            Step::RestoreNode { .. } => return Err("a restore is applied as a start".into()),
            Step::StopNodes { hosts } => {
                for host in hosts {
                    if let Ok(h) = self.live_host(host) {
                        if let Some(n) = &mut h.node {
                            n.process = NodeProcess::Stopped;
                        }
                    }
                }
                return Ok(());
            }
            Step::RestartNode { host, generation } => {
                let h = self.live_host(host)?;
                let Some(n) = &mut h.node else { return Err(format!("{host} has no node")) };
                if n.generation < *generation {
                    n.generation = *generation;
                    n.process = NodeProcess::Starting;
                    n.starting_loops = 1;
                }
            }
            Step::RunVersion { host, version: wanted, artifacts } => {
                let h = self.live_host(host)?;
                let Some(n) = &mut h.node else { return Err(format!("{host} has no node")) };
                if *wanted != version()
                    && artifacts.is_none()
                    && h.installed != Some(wanted.clone())
                {
                    return Err(format!(
                        "{wanted} is not installed on {host} and no artifacts named"
                    ));
                }
                if n.version != *wanted {
                    h.installed = Some(n.version.clone());
                    n.version = wanted.clone();
                    if n.process != NodeProcess::Stopped {
                        n.process = NodeProcess::Starting;
                        n.starting_loops = 1;
                    }
                }
            }
            Step::RemoveMember { node_id, .. } => {
                if !self.has_quorum() {
                    return Err("no quorum".into());
                }
                if self.members.remove(node_id) {
                    self.catch_up_loops = 2;
                }
            }
            Step::DeleteHost { host } => {
                if let Some(h) = self.hosts.get(host) {
                    let member = h.node.as_ref().is_some_and(|n| self.members.contains(&n.id));
                    if member {
                        return Err(format!("violation: deleted {host}, which holds a member"));
                    }
                    if !h.failed && self.catch_up_loops > 0 && h.node.is_some() {
                        return Err(format!(
                            "violation: deleted {host} before every member caught up"
                        ));
                    }
                    if let Some(n) = &h.node {
                        self.joining.remove(&n.id);
                    }
                }
                self.hosts.remove(host);
            }
            Step::TakeBackup { name, sink, host, .. } => {
                // The node takes it after a read barrier: it needs a quorum.
                let quorum = self.has_quorum();
                let h = self.live_host(host)?;
                let serves = h.node.as_ref().is_some_and(|n| n.process == NodeProcess::Running);
                if !serves || !quorum {
                    return Err(format!("the node on {host} does not serve"));
                }
                self.backups.insert((sink.clone(), name.clone()));
            }
            Step::DeleteBackup { name, sink } => {
                if !self.has_quorum() {
                    return Err("no quorum".into());
                }
                self.backups.remove(&(sink.clone(), name.clone()));
            }
        }
        // A lone replica's restart is the one step allowed to interrupt.
        let lone_restart = matches!(step, Step::RestartNode { .. } | Step::RunVersion { .. })
            && self.members.len() == 1;
        if had_quorum && !self.has_quorum() && !lone_restart {
            return Err(format!("violation: {} cost the quorum", step.describe()));
        }
        Ok(())
    }

    fn live_host(&mut self, host: &str) -> Result<&mut SimHost, String> {
        match self.hosts.get_mut(host) {
            Some(h) if !h.failed && h.agent_down_loops == 0 => Ok(h),
            Some(_) => Err(format!("{host}'s agent does not answer")),
            None => Err(format!("{host} does not exist")),
        }
    }

    /// Whether the world is what `desired` asks and the reconciler says so.
    pub fn at(&self, desired: &DesiredState) -> Result<(), String> {
        if self.control.state != ReconcileState::AtDesiredState
            || self.control.accepted.as_ref().map(|d| d.id) != Some(desired.id)
        {
            return Err(format!(
                "reconciler in {:?} for {:?}: {}",
                self.control.state,
                self.control.accepted.as_ref().map(|d| d.id),
                self.control.message
            ));
        }
        if !desired.running {
            // Stopped: every node on a live host is stopped (a member whose
            // host died meanwhile is replaced once the cluster runs again).
            let running = self.hosts.iter().find(|(_, h)| {
                !h.failed && h.node.as_ref().is_some_and(|n| n.process != NodeProcess::Stopped)
            });
            return match running {
                Some((name, _)) => Err(format!("{name}'s node still runs")),
                None => Ok(()),
            };
        }
        self.backups_as(desired)?;
        let expected = Fingerprint::of_desired(desired);
        let actual = self.fingerprint();
        if actual != expected {
            return Err(format!("cluster {actual:?} is not the desired {expected:?}"));
        }
        Ok(())
    }

    /// Whether the sinks hold what `desired` asks: every backup listed, no
    /// backup the control plane does not know of, and no more scheduled ones
    /// in the schedule's sink than `keep` (the latest of the current slot).
    fn backups_as(&self, desired: &DesiredState) -> Result<(), String> {
        for wanted in &desired.backups {
            if !self.backups.contains(&(wanted.sink.clone(), wanted.name.clone())) {
                return Err(format!("backup {}/{} was not taken", wanted.sink, wanted.name));
            }
        }
        for (sink, name) in &self.backups {
            let known = self.control.backups.iter().any(|b| b.sink == *sink && b.name == *name);
            if !known {
                return Err(format!(
                    "backup {sink}/{name} is in its sink, unknown to the control plane"
                ));
            }
            let listed = desired.backups.iter().any(|b| b.sink == *sink && b.name == *name);
            if !listed && !name.starts_with(cairn_control::desired::SCHEDULED_PREFIX) {
                return Err(format!("backup {sink}/{name} is no longer asked for but kept"));
            }
        }
        if let Some(schedule) = &desired.backup_schedule {
            let every_ms = schedule.every_s * 1_000;
            let slot = self.now_ms / every_ms * every_ms;
            let current = (schedule.sink.clone(), cairn_control::planner::scheduled_name(slot));
            let held = self
                .backups
                .iter()
                .filter(|(sink, name)| {
                    *sink == schedule.sink
                        && name.starts_with(cairn_control::desired::SCHEDULED_PREFIX)
                })
                .count();
            if held > schedule.keep as usize {
                return Err(format!("{held} scheduled backups kept, above keep {}", schedule.keep));
            }
            if !self.backups.contains(&current) {
                return Err(format!(
                    "the scheduled backup {}/{} was not taken",
                    current.0, current.1
                ));
            }
        }
        Ok(())
    }

    /// The cluster's shape, without names: what two paths to one desired
    /// state must agree on.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut zones: BTreeMap<String, usize> = BTreeMap::new();
        let mut processes = BTreeSet::new();
        let mut generations = BTreeSet::new();
        let mut versions = BTreeSet::new();
        for &id in &self.members {
            if let Some((_, h)) = self.node_of(id) {
                *zones.entry(h.zone.clone()).or_default() += 1;
                if let Some(n) = &h.node {
                    processes.insert(format!("{:?}", n.process));
                    generations.insert(n.generation);
                    versions.insert(n.version.clone());
                }
            }
        }
        Fingerprint {
            members: self.members.len(),
            hosts: self.hosts.len(),
            zones,
            processes: processes.into_iter().collect(),
            generations: generations.into_iter().collect(),
            versions: versions.into_iter().collect(),
        }
    }
}

/// A cluster's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub members: usize,
    pub hosts: usize,
    pub zones: BTreeMap<String, usize>,
    pub processes: Vec<String>,
    pub generations: Vec<u64>,
    /// The versions the members run.
    pub versions: Vec<String>,
}

impl Fingerprint {
    /// The shape `desired` asks for.
    pub fn of_desired(desired: &DesiredState) -> Fingerprint {
        let replicas = desired.replicas as usize;
        let mut zones = BTreeMap::new();
        for (i, zone) in desired.zones.iter().enumerate() {
            let want =
                replicas / desired.zones.len() + usize::from(i < replicas % desired.zones.len());
            if want > 0 {
                zones.insert(zone.clone(), want);
            }
        }
        let process = if desired.running { NodeProcess::Running } else { NodeProcess::Stopped };
        Fingerprint {
            members: replicas,
            hosts: replicas,
            zones,
            processes: vec![format!("{process:?}")],
            generations: vec![desired.restart_generation],
            versions: vec![desired.version.clone()],
        }
    }
}
