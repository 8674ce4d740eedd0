//! One simulated run: a whole Cairn cluster in one thread, from one seed.
//!
//! Every node is the real [`Driver`] (OmniPaxos replica, state machine,
//! catch-up, compaction) over a real RocksDB in a temporary directory; the
//! network, the clock and the clients are simulated. The seed draws every
//! parameter of the run ([`Params`], printed with any failure) and every
//! choice after that, so a seed replays exactly.
//!
//! A run has two phases:
//! 1. **safety**: clients write, read and delete keys while faults come and
//!    go: message loss, duplication and delay; symmetric, asymmetric and
//!    partial partitions (the OmniPaxos paper's quorum-loss, constrained
//!    election and chained scenarios among them); crashes and restarts of any
//!    node (some between taking messages and answering them), power cuts
//!    (a node loses every write it had not synced, in the middle of a turn:
//!    [`Store::keep_durable_copy`]), and nodes kept down long enough to need
//!    a snapshot (logs keep few entries here).
//! 2. **liveness**: everything heals, every node comes back, and within a
//!    bound every client request must be answered, every node must reach the
//!    same applied index with the same state, and a final linearizable read
//!    of every key on every node joins the history.
//!
//! Checked as it runs: replicas agree on the entry at every index, and no
//! command takes effect twice on a node. Checked at the end: the history is
//! linearizable ([`crate::linearizability`]), which also covers lost
//! acknowledged writes (the final reads see every write that completed).

use std::collections::BTreeMap;
use std::fmt;

use cairn_consensus::driver::{
    Answer, Driver, DriverConfig, Hello, Output, PeerMessage, ReadStats, RequestId,
};
use cairn_consensus::replica::{NodeId, Timing};
use cairn_consensus::Membership;
use cairn_storage::changes::Window;
use cairn_storage::fnv::Fnv1a;
use cairn_storage::log_store::LogStore;
use cairn_storage::{Command, CommandId, Durability, Footprint, Op, Outcome, StateMachine, Store};
use cairn_util::Rng;
use tempfile::TempDir;

use crate::agreement::Agreement;
use crate::exactly_once::ExactlyOnce;
use crate::feeds::Feeds;
use crate::linearizability::{self, Completion, Entry, Output as KvOutput, Verdict};
use crate::log_invariants::{LogInvariants, Progress};
use crate::network::{Faults, Network, NetworkStats};
use crate::promises::Promises;
use crate::snapshots::Snapshots;

/// Tries of one client operation before it gives up (safety phase).
const ATTEMPTS_MAX: u32 = 4;
/// Ticks a client waits before it tries again after a refusal.
const RETRY_BACKOFF_TICKS: u64 = 5;
/// Restarts that reopen RocksDB (the others take a fresh handle on the open
/// database; see `SimNode::store`), in percent.
const REOPEN_PERCENT: u64 = 10;
/// Each tick, the chance in a thousand that a node is picked to lose its
/// power a few ticks later (and keeps a copy of its disk's state until then).
const POWER_CUT_PER_MILLE: u64 = 3;
/// How often every node compacts its log, in ticks.
const COMPACT_INTERVAL_TICKS: u64 = 5;
/// Timing of every replica, in ticks.
const TIMING: Timing =
    Timing { election_timeout_ticks: 5, resend_timeout_ticks: 10, repropose_timeout_ticks: 15 };

/// Everything a seed decides about a run before it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    pub safety_ticks: u64,
    /// The bound on the liveness phase.
    pub liveness_ticks: u64,
    pub faults: Faults,
    /// Chance, per tick, of a new fault event (in 1/1000).
    pub fault_per_mille: u64,
    /// Log entries each node keeps behind its applied index.
    pub log_retain_entries: u64,
    /// Ticks a client waits for an answer.
    pub client_timeout_ticks: u64,
    /// Key+value bytes per snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Chance, per tick of the safety phase, of asking a node for a
    /// membership change (in 1/1000; 0 for runs without changes).
    pub membership_per_mille: u64,
    /// Most bytes of entries in one consensus message: small in some runs,
    /// so that batches split (the real bound holds entries of megabytes).
    pub message_entries_bytes_max: usize,
    /// How much change history each node keeps: small in some runs, so
    /// that it is trimmed and feeds meet expired cursors.
    pub changes_window: Window,
}

impl Params {
    pub fn from_seed(seed: u64) -> Params {
        let mut rng = Rng::new(seed ^ 0x5EED_5EED_5EED_5EED);
        Params {
            nodes: if rng.chance(70) { 3 } else { 5 },
            clients: 2 + rng.below(4) as usize,
            keys: 1 + rng.below(4) as usize,
            safety_ticks: 300 + rng.below(500),
            liveness_ticks: 3000,
            faults: Faults {
                latency_ticks: 1 + rng.below(6),
                drop_percent: rng.below(12),
                duplicate_percent: rng.below(6),
            },
            fault_per_mille: 5 + rng.below(30),
            log_retain_entries: 2 + rng.below(40),
            client_timeout_ticks: 40 + rng.below(100),
            snapshot_chunk_bytes: 64 + rng.below(2048) as usize,
            membership_per_mille: if rng.chance(60) { 1 + rng.below(8) } else { 0 },
            // Drawn last, so that the fields above stay what they were for
            // every seed.
            message_entries_bytes_max: if rng.chance(30) {
                64 + rng.below(512) as usize
            } else {
                cairn_consensus::replica::MESSAGE_ENTRIES_BYTES_MAX
            },
            changes_window: if rng.chance(50) {
                Window { entries: 5 + rng.below(200), bytes: 256 + rng.below(8192) }
            } else {
                Window::default()
            },
        }
    }
}

/// The kinds of fault a run can inject, counted in [`Report::faults`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Isolate,
    SplitMajority,
    /// One pair of nodes cannot talk; every other pair can.
    PairCut,
    QuorumLoss,
    ConstrainedElection,
    Chained,
    Heal,
    Crash,
    CrashBeforePoll,
    /// A power cut: the node loses every write not yet on disk, after
    /// sending what a turn sends before its sync.
    PowerCut,
    KeepDown,
    Restart,
    /// Membership changes asked for: one node more, one fewer, one swapped
    /// for a new one (ids are reused once free).
    AddNode,
    RemoveNode,
    ReplaceNode,
}

/// The smallest and largest cluster the simulator changes membership within.
const MEMBERS_MIN: usize = 3;
const MEMBERS_MAX: usize = 5;

/// The peer address of node `id` (never dialled: the network is simulated).
fn address(id: NodeId) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 7100 + id as u16))
}

/// The name of the simulation's `k`th key.
pub(crate) fn key_name(k: u64) -> String {
    format!("k{k}")
}

/// Keys of counters: only increments and reads reach them.
const COUNTER_KEYS: u64 = 2;

fn counter_name(k: u64) -> String {
    format!("n{k}")
}

/// A fresh, empty directory for a node's store: memory-backed when the
/// machine has it (the simulator crashes processes, never disks, so nothing
/// is lost).
fn node_dir() -> TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir())
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory")
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub params: Params,
    /// Everything that went wrong; empty for a good run.
    pub violations: Vec<String>,
    pub faults: BTreeMap<FaultKind, u64>,
    pub network: NetworkStats,
    /// Operations in the history, and how many had an unknown outcome.
    pub operations: usize,
    pub unknown_outcomes: usize,
    /// Keys whose linearizability search ran out of budget.
    pub unchecked_keys: usize,
    /// Increments that returned a sum, and those the gate refused (before
    /// the finalize applied).
    pub adds: usize,
    pub adds_refused: u64,
    pub snapshots_installed: u64,
    /// Of those, installs that stopped short of their gap.
    pub snapshots_short_of_gap: u64,
    /// Log syncs sent (`AcceptSync`, and `Promise`s with a sync), and
    /// leaders' probes of stalled followers (empty `AcceptDecide`s).
    pub syncs: u64,
    pub probes: u64,
    /// Pages feeds read and events they delivered, their moves to other
    /// nodes, and their restarts (no node kept their cursor).
    pub feed_pages: u64,
    pub feed_events: u64,
    pub feed_moves: u64,
    pub feed_restarts: u64,
    /// Configurations the cluster went through (1 without a membership
    /// change).
    pub configurations: u64,
    /// How the nodes served linearizable reads, summed over every node and
    /// restart.
    pub reads: ReadStats,
    pub ticks: u64,
    /// A hash of every delivered message and every history entry, when the
    /// run was traced ([`run_traced`]): two runs of one seed have the same
    /// trace.
    pub trace: Option<u64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {}: {:?}", self.seed, self.params)?;
        writeln!(
            f,
            "  {} ticks, {} operations ({} unknown), {} snapshots installed ({} short of their \
             gap), {} log syncs, {} probes, {} configurations, faults {:?}, network {:?}",
            self.ticks,
            self.operations,
            self.unknown_outcomes,
            self.snapshots_installed,
            self.snapshots_short_of_gap,
            self.syncs,
            self.probes,
            self.configurations,
            self.faults,
            self.network
        )?;
        writeln!(
            f,
            "  feeds: {} pages, {} events, {} moves to another node, {} restarts",
            self.feed_pages, self.feed_events, self.feed_moves, self.feed_restarts
        )?;
        writeln!(
            f,
            "  reads: {} after a confirmation round, {} through a barrier ({} fell back), {} \
             rounds",
            self.reads.read_index, self.reads.barrier, self.reads.fell_back, self.reads.rounds
        )?;
        for violation in &self.violations {
            writeln!(f, "  VIOLATION: {violation}")?;
        }
        Ok(())
    }
}

/// Runs the simulation of `seed` to the end.
pub fn run(seed: u64) -> Report {
    run_with(seed, Planted::None)
}

/// A bug planted in every node, to show that the simulator catches it
/// (feature `planted-bugs`, test builds only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planted {
    None,
    /// Linearizable reads answered from local state without a barrier.
    #[cfg(feature = "planted-bugs")]
    StaleReads,
    /// A leader serves reads without hearing from a majority in its
    /// confirmation round.
    #[cfg(feature = "planted-bugs")]
    UnconfirmedReads,
    /// A read of the change history that resumes inside an entry skips a
    /// change.
    #[cfg(feature = "planted-bugs")]
    FeedSkipsOnResume,
    /// Acceptances and promises leave before the sync of what they report.
    #[cfg(feature = "planted-bugs")]
    EarlyAcceptances,
}

/// Runs `seed` with a planted bug.
pub fn run_with(seed: u64, planted: Planted) -> Report {
    Sim::new(seed, planted, false).run()
}

/// Runs `seed` and hashes everything it did into [`Report::trace`].
pub fn run_traced(seed: u64) -> Report {
    Sim::new(seed, Planted::None, true).run()
}

impl SimNode {
    fn new() -> SimNode {
        SimNode {
            driver: None,
            store: None,
            dir: node_dir(),
            starts: 0,
            down_until: None,
            leaving: false,
            power_cut: None,
        }
    }
}

struct SimNode {
    // Dropped in this order: the driver and the store before their
    // directory.
    driver: Option<Driver>,
    /// The node's database as the last start opened it. Most restarts take a
    /// fresh handle on it ([`Store::reopened`]): a crashed process loses
    /// nothing here, since every write reaches the operating system at once
    /// (`Durability::Unsynced`), so a reopened RocksDB would hold exactly the
    /// same, and opening one is most of a run's cost. Some restarts
    /// ([`REOPEN_PERCENT`]) reopen RocksDB for real.
    store: Option<Store>,
    dir: TempDir,
    /// Starts so far (each draws fresh randomness).
    starts: u64,
    /// While down: the tick to come back at.
    down_until: Option<u64>,
    /// Removed from the cluster, and kept running until the members have
    /// caught up: they may need its state.
    leaving: bool,
    /// A power cut to come: at this tick, with the copy of what the node's
    /// disk holds ([`Store::keep_durable_copy`]).
    power_cut: Option<(u64, TempDir)>,
}

#[derive(Clone, Debug)]
enum ClientOp {
    OpenSession,
    Put {
        key: String,
        value: Vec<u8>,
        id: CommandId,
    },
    Delete {
        key: String,
        id: CommandId,
    },
    Get {
        key: String,
    },
    /// `Op::KvIncrement` of a counter key.
    Add {
        key: String,
        by: i64,
        id: CommandId,
    },
    /// Raises the cluster version to what this build runs, which opens the
    /// gate of increments: refused until it applies.
    Finalize {
        id: CommandId,
    },
}

struct InFlight {
    op: ClientOp,
    invoked_at: u64,
    attempts: u32,
    /// Whether an earlier attempt may have taken effect.
    maybe_applied: bool,
    /// The request being waited for, on which node, until when.
    waiting: Option<(RequestId, NodeId, u64)>,
    /// When to try again, after a refusal or a timeout.
    retry_at: u64,
}

struct SimClient {
    id: u64,
    session: Option<u64>,
    seq: u64,
    node: usize,
    in_flight: Option<InFlight>,
    /// A final read per node and key, in the liveness phase.
    final_reads: Vec<(NodeId, String)>,
}

struct Sim {
    seed: u64,
    params: Params,
    rng: Rng,
    /// Draws membership changes, apart from `rng` so that runs without
    /// changes keep the schedule they had before changes were simulated.
    admin_rng: Rng,
    /// Draws which restarts reopen RocksDB, apart from `rng`: the choice
    /// changes nothing a node can see, so it must not change the schedule.
    reopen_rng: Rng,
    /// Draws power cuts, apart from `rng`, so that the other faults keep
    /// the schedule they had before power cuts were simulated.
    power_rng: Rng,
    /// Membership changes asked for and not yet answered, by request.
    admin_requests: BTreeMap<RequestId, FaultKind>,
    /// Configurations the cluster went through (seen by the simulator).
    configurations: u64,
    now: u64,
    membership: Membership,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Network,
    clients: Vec<SimClient>,
    /// Which client waits for each request.
    routes: BTreeMap<RequestId, usize>,
    next_request: RequestId,
    history: Vec<Entry>,
    violations: Vec<String>,
    /// Log syncs and probes sent (see [`Report`]).
    syncs: u64,
    probes: u64,
    faults: BTreeMap<FaultKind, u64>,
    // The checkers, one file each.
    agreement: Agreement,
    exactly_once: ExactlyOnce,
    log_invariants: LogInvariants,
    promises: Promises,
    snapshots: Snapshots,
    feeds: Feeds,
    /// Hashes what the run did, when it is traced (encoding every message
    /// costs time that finds no bug, so only the replay check pays it).
    trace: Option<Fnv1a>,
    liveness: bool,
    /// Read only where bugs can be planted (feature `planted-bugs`).
    #[cfg_attr(not(feature = "planted-bugs"), allow(dead_code))]
    planted: Planted,
    /// Keys whose linearizability search ran out of budget (a violation).
    unchecked_keys: usize,
    /// Whether a client was given the finalize to send.
    finalize_sent: bool,
    refused_adds: u64,
    /// Read counters of the drivers that crashed.
    reads: ReadStats,
}

impl Sim {
    fn new(seed: u64, planted: Planted, traced: bool) -> Sim {
        let params = Params::from_seed(seed);
        let ids: Vec<NodeId> = (1..=params.nodes as u64).collect();
        let addresses = ids.iter().map(|&id| (id, address(id)));
        let membership = Membership::new_cluster(addresses.collect()).expect("a valid membership");
        let nodes = ids.iter().map(|&id| (id, SimNode::new())).collect();
        let clients = (0..params.clients)
            .map(|i| SimClient {
                id: i as u64,
                session: None,
                seq: 0,
                node: i,
                in_flight: None,
                final_reads: Vec::new(),
            })
            .collect();
        let net = Network::new(params.faults);
        let log_invariants = LogInvariants::new(params.log_retain_entries);
        let keys = params.keys;
        let mut sim = Sim {
            seed,
            rng: Rng::new(seed),
            admin_rng: Rng::new(seed ^ 0xAD41_0000_0000_0001),
            reopen_rng: Rng::new(seed ^ 0x0FE4_0000_0000_0002),
            power_rng: Rng::new(seed ^ 0x90E7_0000_0000_0003),
            admin_requests: BTreeMap::new(),
            configurations: 1,
            params,
            now: 0,
            membership,
            nodes,
            net,
            clients,
            routes: BTreeMap::new(),
            next_request: 0,
            history: Vec::new(),
            violations: Vec::new(),
            syncs: 0,
            probes: 0,
            faults: BTreeMap::new(),
            agreement: Agreement::default(),
            exactly_once: ExactlyOnce::default(),
            log_invariants,
            promises: Promises::default(),
            snapshots: Snapshots::default(),
            feeds: Feeds::new(seed, &ids, keys),
            trace: traced.then(Fnv1a::new),
            liveness: false,
            planted,
            unchecked_keys: 0,
            finalize_sent: false,
            refused_adds: 0,
            reads: ReadStats::default(),
        };
        for id in ids {
            sim.start(id);
        }
        sim
    }

    fn run(mut self) -> Report {
        while self.now < self.params.safety_ticks && self.violations.is_empty() {
            self.maybe_inject_fault();
            self.maybe_change_membership();
            self.step();
        }
        self.begin_liveness();
        let bound = self.now + self.params.liveness_ticks;
        while !self.converged() && self.violations.is_empty() {
            if self.now >= bound {
                self.violations.push(format!(
                    "no convergence within {} ticks of healing: {}",
                    self.params.liveness_ticks,
                    self.progress()
                ));
                break;
            }
            self.step();
        }
        self.final_checks();
        self.report()
    }

    // ---- Nodes ----

    fn start(&mut self, id: NodeId) {
        let membership = self.membership.clone();
        let params = self.params.clone();
        let seed = self.seed;
        let node = self.nodes.get_mut(&id).expect("a node");
        node.starts += 1;
        node.down_until = None;
        tracing::info!(t = self.now, id, "node starts");
        let reopen = self.reopen_rng.chance(REOPEN_PERCENT);
        let store = match node.store.take() {
            Some(open) if !reopen => open.reopened().expect("the store reopens"),
            kept => {
                // Every handle closes before RocksDB opens the directory again.
                drop(kept);
                Store::open_with(node.dir.path(), Footprint::Small).expect("the store opens")
            }
        };
        node.store = Some(store.clone());
        store.set_durability(Durability::Unsynced);
        if Membership::load(&store).expect("the membership loads").is_none() {
            membership.begin(&store).expect("the membership is stored");
        }
        let stored = Membership::load(&store).expect("loads").expect("stored");
        let log = LogStore::open(&store).expect("the log opens");
        let forgotten = self.promises.restarted(id, stored.configuration_id, &log);
        drop(log);
        self.violations.extend(forgotten);
        let wiped = cairn_storage::snapshot::discard_unfinished_install(&store).expect("a reset");
        #[cfg(feature = "planted-bugs")]
        if self.planted == Planted::FeedSkipsOnResume {
            store.plant_skip_on_resume();
        }
        let mut sm = StateMachine::open(store).expect("the state machine opens");
        sm.set_changes_window(params.changes_window);
        // A state wiped after an interrupted snapshot install applies its
        // entries again: only what the state still holds counts.
        self.exactly_once.state_restored(id, sm.applied_index());
        self.log_invariants.restarted(id, wiped);
        let me = Hello { api_address: format!("sim-{id}"), ..Hello::default() };
        let node_seed = seed ^ id.rotate_left(40) ^ node.starts.rotate_left(20);
        let mut config =
            DriverConfig::new(id, stored, TIMING, node_seed, me, node.dir.path().join("snapshots"));
        config.peer_silence_ticks = 3 * TIMING.election_timeout_ticks;
        config.log_retain_entries = params.log_retain_entries;
        config.compact_interval_ticks = COMPACT_INTERVAL_TICKS;
        config.catch_up_timeout_ticks = 20;
        config.snapshot_chunk_bytes = params.snapshot_chunk_bytes;
        config.message_entries_bytes_max = params.message_entries_bytes_max;
        config.record_applied = true;
        #[cfg(feature = "planted-bugs")]
        {
            config.planted_stale_reads = self.planted == Planted::StaleReads;
            config.planted_unconfirmed_reads = self.planted == Planted::UnconfirmedReads;
            config.planted_early_acceptances = self.planted == Planted::EarlyAcceptances;
        }
        node.driver = Some(Driver::open(config, sm).expect("the driver opens"));
    }

    fn crash(&mut self, id: NodeId, down_for: u64) {
        let node = self.nodes.get_mut(&id).expect("a node");
        let Some(driver) = node.driver.take() else { return };
        self.reads += driver.read_stats();
        if node.power_cut.take().is_some() {
            // A process crash first: the disk keeps everything.
            driver.state_machine().store().stop_durable_copy();
        }
        node.down_until = Some(self.now + down_for.max(1));
        tracing::info!(t = self.now, id, down_for, "node crashes");
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.net.crash(id, self.now, &ids);
    }

    fn up_nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.driver.is_some()).map(|(id, _)| *id).collect()
    }

    // ---- One tick ----

    fn step(&mut self) {
        self.now += 1;
        let restart: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.down_until.is_some_and(|t| t <= self.now))
            .map(|(id, _)| *id)
            .collect();
        for id in restart {
            self.start(id);
        }
        // Connections that come back: both ends resynchronise.
        let up: Vec<NodeId> = self.up_nodes();
        for (a, b) in self.net.reconnections(self.now, |n| up.contains(&n)) {
            for (node, peer) in [(a, b), (b, a)] {
                if let Some(driver) = self.nodes.get_mut(&node).and_then(|n| n.driver.as_mut()) {
                    driver.reconnected(peer);
                }
            }
        }
        for (from, to, message) in self.net.deliver(self.now) {
            if self.trace.is_some() {
                self.trace_message(from, to, &message);
            }
            let Some(driver) = self.nodes.get_mut(&to).and_then(|n| n.driver.as_mut()) else {
                continue;
            };
            let _span = tracing::info_span!("node", id = to, t = self.now).entered();
            tracing::trace!(from, ?message, "delivered");
            if let Err(error) = driver.step(from, message) {
                self.violations.push(format!("node {to} failed on a message: {error}"));
            }
        }
        // A crash between taking messages and answering them.
        let roll = self.rng.chance(1) && self.rng.chance(30);
        if !self.liveness && roll {
            let up = self.up_nodes();
            if let Some(&id) = up.get(self.rng.below(up.len() as u64) as usize) {
                self.count(FaultKind::CrashBeforePoll);
                let down_for = 5 + self.rng.below(60);
                self.crash(id, down_for);
            }
        }
        if !self.liveness && self.power_rng.per_mille(POWER_CUT_PER_MILLE) {
            self.arm_power_cut();
        }
        for id in self.up_nodes() {
            self.poll(id);
        }
        self.retire_leavers();
        let stores: BTreeMap<NodeId, Store> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| {
                n.driver.as_ref().map(|d| (*id, d.state_machine().store().clone()))
            })
            .collect();
        let found = self.feeds.turn(&stores);
        self.violations.extend(found);
        for c in 0..self.clients.len() {
            self.client_turn(c);
        }
    }

    fn poll(&mut self, id: NodeId) {
        let mut out = Output::default();
        // A node removed from the cluster earlier in this tick is gone.
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let cut = node.power_cut.as_ref().is_some_and(|(at, _)| *at <= self.now);
        let Some(driver) = node.driver.as_mut() else { return };
        let _span = tracing::info_span!("node", id, t = self.now).entered();
        driver.tick();
        // A power cut comes between what a turn sends before its sync and
        // the sync.
        let polled = if cut { driver.prepare(&mut out) } else { driver.poll(&mut out) };
        if let Err(error) = polled {
            self.violations.push(format!("node {id} stopped: {error}"));
            return;
        }
        let applied = driver.take_applied();
        let snapshots = driver.take_snapshot_events();
        let store = driver.state_machine().store().clone();
        let progress = Progress {
            applied: driver.state_machine().applied_index(),
            decided: driver.replica().decided_index(),
            compacted: driver.replica().compacted_index(),
            base: driver.replica().base_index(),
            configuration_id: driver.membership().configuration_id,
            compacted_this_tick: driver.now_ticks().is_multiple_of(COMPACT_INTERVAL_TICKS),
        };
        let found = [
            self.agreement.applied(id, &applied),
            self.exactly_once.applied(id, &applied),
            self.snapshots.observed(id, &snapshots),
            self.log_invariants.observed(id, progress),
            self.feeds.observe(id, &store),
        ];
        // Every handle on the store closes before a power cut.
        drop(store);
        self.violations.extend(found.into_iter().flatten());
        self.send_all(id, out.messages);
        for (request, answer) in out.answers {
            self.answered(id, request, answer);
        }
        if let Some(membership) = out.membership {
            self.observe_membership(id, membership);
        }
        if cut {
            self.power_cut(id);
        }
    }

    /// Picks a running node to lose its power in a few ticks; from now on
    /// its store keeps a copy of what its disk holds.
    fn arm_power_cut(&mut self) {
        let armable: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.driver.is_some() && n.power_cut.is_none() && !n.leaving)
            .map(|(id, _)| *id)
            .collect();
        if armable.is_empty() {
            return;
        }
        let id = armable[self.power_rng.below(armable.len() as u64) as usize];
        let at = self.now + 1 + self.power_rng.below(4);
        let node = self.nodes.get_mut(&id).expect("a node");
        let copy = node_dir();
        let store = node.driver.as_ref().expect("running").state_machine().store();
        store.keep_durable_copy(&copy.path().join("db")).expect("a copy of the disk");
        node.power_cut = Some((at, copy));
    }

    /// The power cut armed on `id`: every handle on its store closes, and
    /// its directory goes back to what the disk held at its last sync.
    fn power_cut(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("a node");
        if node.leaving {
            // A node removed from the cluster runs until it is deleted; it
            // does not store the configuration that removed it, so a restart
            // would find it in the one before.
            if node.power_cut.take().is_some() {
                if let Some(driver) = &node.driver {
                    driver.state_machine().store().stop_durable_copy();
                }
            }
            return;
        }
        let (Some((_, copy)), Some(driver)) = (node.power_cut.take(), node.driver.take()) else {
            return;
        };
        self.reads += driver.read_stats();
        drop(driver);
        node.store = None;
        let dir = node.dir.path();
        for entry in std::fs::read_dir(dir).expect("the node's directory lists") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("a directory goes");
            } else {
                std::fs::remove_file(&path).expect("a file goes");
            }
        }
        for entry in std::fs::read_dir(copy.path().join("db")).expect("the copy lists") {
            let entry = entry.expect("an entry");
            std::fs::rename(entry.path(), dir.join(entry.file_name())).expect("a file moves");
        }
        let down_for = 5 + self.power_rng.below(40);
        node.down_until = Some(self.now + down_for);
        tracing::info!(t = self.now, id, down_for, "node loses its power");
        self.log_invariants.power_cut(id);
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.net.crash(id, self.now, &ids);
        self.count(FaultKind::PowerCut);
    }

    // ---- Faults ----

    fn maybe_inject_fault(&mut self) {
        if self.rng.below(1000) >= self.params.fault_per_mille {
            return;
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let kind = match self.rng.below(10) {
            0 => FaultKind::Isolate,
            1 => FaultKind::SplitMajority,
            2 => FaultKind::PairCut,
            3 => FaultKind::QuorumLoss,
            4 => FaultKind::ConstrainedElection,
            5 => FaultKind::Chained,
            6 | 7 => FaultKind::Heal,
            8 => FaultKind::Crash,
            _ => FaultKind::KeepDown,
        };
        match kind {
            FaultKind::Isolate => {
                let node = self.pick(&ids);
                self.isolate(node);
            }
            FaultKind::Heal => self.net.heal(),
            FaultKind::Crash => {
                let node = self.pick(&ids);
                let down_for = 5 + self.rng.below(80);
                self.crash(node, down_for);
            }
            FaultKind::KeepDown => {
                // Down for long: the others compact past it.
                let node = self.pick(&ids);
                let down_for = 150 + self.rng.below(250);
                self.crash(node, down_for);
            }
            partition => self.partition(partition, &ids),
        }
        self.count(kind);
    }

    /// One of `ids`, drawn from the schedule's generator.
    fn pick(&mut self, ids: &[NodeId]) -> NodeId {
        ids[self.rng.below(ids.len() as u64) as usize]
    }

    /// Cuts the links of a partial or whole partition: the OmniPaxos
    /// paper's quorum-loss, constrained-election and chained scenarios, a
    /// minority split off, or one link.
    fn partition(&mut self, kind: FaultKind, ids: &[NodeId]) {
        let mut cuts: Vec<(NodeId, NodeId)> = Vec::new();
        match kind {
            FaultKind::SplitMajority => {
                // A random minority cut off from the rest, both ways.
                let mut shuffled = ids.to_vec();
                for i in (1..shuffled.len()).rev() {
                    let j = self.rng.below(i as u64 + 1) as usize;
                    shuffled.swap(i, j);
                }
                let minority = &shuffled[..ids.len() / 2];
                for &a in minority {
                    for &b in ids.iter().filter(|b| !minority.contains(b)) {
                        cuts.extend([(a, b), (b, a)]);
                    }
                }
            }
            FaultKind::PairCut => cuts.push((self.pick(ids), self.pick(ids))),
            FaultKind::QuorumLoss => {
                // One node still reaches everyone, the others reach only it.
                let hub = self.pick(ids);
                self.net.heal();
                for &a in ids.iter().filter(|a| **a != hub) {
                    cuts.extend(ids.iter().filter(|b| **b != hub && **b != a).map(|&b| (a, b)));
                }
            }
            FaultKind::ConstrainedElection => {
                // The leader is cut from everyone but one node, which alone
                // could reach a quorum.
                let leader = match self.leader() {
                    Some(leader) => leader,
                    None => self.pick(ids),
                };
                let keep = self.pick(ids);
                self.net.heal();
                for &b in ids.iter().filter(|b| **b != leader && **b != keep) {
                    cuts.extend([(leader, b), (b, leader)]);
                }
            }
            FaultKind::Chained => {
                // Each node reaches only its neighbours in a line.
                self.net.heal();
                for (i, &a) in ids.iter().enumerate() {
                    for (j, &b) in ids.iter().enumerate() {
                        if i.abs_diff(j) > 1 {
                            cuts.push((a, b));
                        }
                    }
                }
            }
            other => unreachable!("{other:?} is not a partition"),
        }
        let now = self.now;
        for (a, b) in cuts {
            self.net.cut(a, b, now);
        }
    }

    /// Sometimes asks an up member for a membership change, as an operator
    /// would through the admin API: one node more, one fewer, or one
    /// replaced, keeping 3 to 5 members. The answer is not waited for.
    fn maybe_change_membership(&mut self) {
        let per_mille = self.params.membership_per_mille;
        if per_mille == 0 || self.admin_rng.below(1000) >= per_mille {
            return;
        }
        let up: Vec<NodeId> = self
            .membership
            .ids()
            .into_iter()
            .filter(|id| self.nodes.get(id).is_some_and(|n| n.driver.is_some()))
            .collect();
        if up.is_empty() {
            return;
        }
        let asked = up[self.admin_rng.below(up.len() as u64) as usize];
        // The members as the asked node knows them.
        let Some(driver) = self.nodes.get(&asked).and_then(|n| n.driver.as_ref()) else { return };
        let mut members = driver.membership().members.clone();
        let ids: Vec<NodeId> = members.keys().copied().collect();
        let free = (1..)
            .find(|id| !self.nodes.contains_key(id) && !members.contains_key(id))
            .expect("a free id");
        let victim = ids[self.admin_rng.below(ids.len() as u64) as usize];
        let kind = match self.admin_rng.below(3) {
            0 if ids.len() < MEMBERS_MAX => FaultKind::AddNode,
            1 if ids.len() > MEMBERS_MIN => FaultKind::RemoveNode,
            _ => FaultKind::ReplaceNode,
        };
        if kind != FaultKind::AddNode {
            members.remove(&victim);
        }
        if kind != FaultKind::RemoveNode {
            members.insert(free, address(free));
        }
        self.count(kind);
        let request = self.next_request;
        self.next_request += 1;
        self.admin_requests.insert(request, kind);
        let mut out = Output::default();
        let driver = self.nodes.get_mut(&asked).and_then(|n| n.driver.as_mut()).expect("up");
        driver.change_membership(request, members, &mut out);
        self.send_all(asked, out.messages);
        for (request, answer) in out.answers {
            self.answered(asked, request, answer);
        }
    }

    /// A node moved to `next`. The first time the simulator sees a
    /// configuration it does what an operator does once a change is made:
    /// starts the new nodes empty (they catch up from the others), and marks
    /// the nodes that left, to delete them once every member has applied the
    /// state they may alone hold ([`Sim::retire_leavers`]).
    fn observe_membership(&mut self, from: NodeId, next: Membership) {
        if next.configuration_id <= self.membership.configuration_id {
            return;
        }
        if next.members.len() < MEMBERS_MIN {
            self.violations.push(format!(
                "node {from} moved to configuration {} of {} members, fewer than were ever \
                 asked for",
                next.configuration_id,
                next.members.len()
            ));
            return;
        }
        self.configurations += 1;
        tracing::info!(t = self.now, from, members = ?next.ids(), "a new configuration");
        for (id, node) in self.nodes.iter_mut() {
            node.leaving |= !next.contains(*id);
        }
        self.membership = next.clone();
        for id in next.ids() {
            if self.nodes.contains_key(&id) {
                continue;
            }
            self.nodes.insert(id, SimNode::new());
            self.start(id);
            if self.liveness {
                self.schedule_final_reads(id, 0);
            }
        }
    }

    /// Stops and deletes the nodes that left the cluster once every member
    /// is up and has applied through the start of the configuration: until
    /// then a removed node may be the only one with part of the state (its
    /// peers may have moved on before applying all the old configuration).
    fn retire_leavers(&mut self) {
        if !self.nodes.values().any(|n| n.leaving) {
            return;
        }
        let base = self.membership.base_index;
        let caught_up = self.membership.ids().iter().all(|id| {
            self.nodes
                .get(id)
                .and_then(|n| n.driver.as_ref())
                .is_some_and(|d| d.state_machine().applied_index() >= base)
        });
        if !caught_up {
            return;
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let leaving: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| n.leaving).map(|(id, _)| *id).collect();
        for id in leaving {
            tracing::info!(t = self.now, id, "a removed node is deleted");
            self.nodes.remove(&id);
            self.exactly_once.deleted(id);
            self.log_invariants.deleted(id);
            self.promises.deleted(id);
            self.net.crash(id, self.now, &ids);
        }
    }

    /// The nodes of the current configuration.
    fn members(&self) -> impl Iterator<Item = (&NodeId, &SimNode)> {
        self.nodes.iter().filter(|(_, n)| !n.leaving)
    }

    fn isolate(&mut self, node: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let now = self.now;
        for other in ids {
            self.net.cut(node, other, now);
            self.net.cut(other, node, now);
        }
    }

    fn count(&mut self, kind: FaultKind) {
        tracing::info!(t = self.now, ?kind, "fault");
        *self.faults.entry(kind).or_default() += 1;
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.driver.as_ref().map(|d| (id, d)))
            .find(|(_, d)| d.replica().is_leader())
            .map(|(id, _)| *id)
    }

    /// A final read of every key on `node`, spread over the clients from
    /// client `turn` on; answers the turn after the last.
    fn schedule_final_reads(&mut self, node: NodeId, mut turn: usize) -> usize {
        let clients = self.clients.len();
        let keys = (0..self.params.keys as u64).map(key_name);
        for key in keys.chain((0..COUNTER_KEYS).map(counter_name)) {
            self.clients[turn % clients].final_reads.push((node, key));
            turn += 1;
        }
        turn
    }

    fn begin_liveness(&mut self) {
        self.liveness = true;
        self.net.heal();
        self.net.set_faults(Faults { latency_ticks: 2, drop_percent: 0, duplicate_percent: 0 });
        let down: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| n.driver.is_none()).map(|(id, _)| *id).collect();
        for id in down {
            self.count(FaultKind::Restart);
            self.start(id);
        }
        // Every key is read on every member once more, spread over the
        // clients.
        let ids: Vec<NodeId> = self.members().map(|(id, _)| *id).collect();
        let mut turn = 0;
        for &node in &ids {
            turn = self.schedule_final_reads(node, turn);
        }
    }

    // ---- Clients ----

    fn client_turn(&mut self, c: usize) {
        let now = self.now;
        let timeout = self.params.client_timeout_ticks;
        let client = &mut self.clients[c];
        if let Some(flight) = &mut client.in_flight {
            match flight.waiting {
                Some((request, node, deadline)) if deadline <= now => {
                    // Timed out: it may still take effect.
                    flight.waiting = None;
                    flight.maybe_applied |= !matches!(flight.op, ClientOp::Get { .. });
                    flight.retry_at = now;
                    self.routes.remove(&request);
                    if let Some(driver) = self.nodes.get_mut(&node).and_then(|n| n.driver.as_mut())
                    {
                        driver.cancel(request);
                    }
                    self.retry_or_give_up(c);
                }
                Some(_) => {}
                None if flight.retry_at <= now => self.submit(c, timeout),
                None => {}
            }
            return;
        }
        if client.session.is_none() {
            client.in_flight = Some(InFlight::new(ClientOp::OpenSession, now));
            self.submit(c, timeout);
            return;
        }
        if self.liveness {
            if let Some((node, key)) = self.clients[c].final_reads.pop() {
                let client = &mut self.clients[c];
                client.in_flight = Some(InFlight::new(ClientOp::Get { key }, now));
                client.node = self.nodes.keys().position(|id| *id == node).unwrap_or(0);
                self.submit(c, timeout);
            }
            return;
        }
        if !self.rng.chance(30) {
            return;
        }
        let key = key_name(self.rng.below(self.params.keys as u64));
        let counter = counter_name(self.rng.below(COUNTER_KEYS));
        let roll = self.rng.below(100);
        let finalize = !self.finalize_sent && self.rng.chance(20);
        self.finalize_sent |= finalize;
        let by = 1 + self.rng.below(3) as i64;
        let client = &mut self.clients[c];
        let session = client.session.expect("a session");
        let op = if finalize {
            client.seq += 1;
            ClientOp::Finalize { id: CommandId { session, seq: client.seq } }
        } else if roll < 44 {
            client.seq += 1;
            let value = format!("c{}.{}", client.id, client.seq).into_bytes();
            ClientOp::Put { key, value, id: CommandId { session, seq: client.seq } }
        } else if roll < 78 {
            ClientOp::Get { key }
        } else if roll < 88 {
            client.seq += 1;
            ClientOp::Delete { key, id: CommandId { session, seq: client.seq } }
        } else if roll < 97 {
            client.seq += 1;
            ClientOp::Add { key: counter, by, id: CommandId { session, seq: client.seq } }
        } else {
            ClientOp::Get { key: counter }
        };
        client.in_flight = Some(InFlight::new(op, now));
        self.submit(c, timeout);
    }

    /// Sends the client's operation to its current node.
    fn submit(&mut self, c: usize, timeout: u64) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let node = ids[self.clients[c].node % ids.len()];
        let request = self.next_request;
        self.next_request += 1;
        let now = self.now;
        let flight = self.clients[c].in_flight.as_mut().expect("in flight");
        flight.attempts += 1;
        let op = flight.op.clone();
        let Some(driver) = self.nodes.get_mut(&node).and_then(|n| n.driver.as_mut()) else {
            // Connection refused: it certainly did not take effect.
            flight.retry_at = now + RETRY_BACKOFF_TICKS;
            self.retry_or_give_up(c);
            return;
        };
        flight.waiting = Some((request, node, now + timeout));
        let mut out = Output::default();
        match op {
            ClientOp::OpenSession => driver.open_session(request, &mut out),
            ClientOp::Put { key, value, id } => {
                driver.propose(request, Command::new(Some(id), Op::KvPut { key, value }), &mut out)
            }
            ClientOp::Delete { key, id } => {
                driver.propose(request, Command::new(Some(id), Op::KvDelete { key }), &mut out)
            }
            ClientOp::Get { .. } => driver.read(request, &mut out),
            ClientOp::Add { key, by, id } => {
                let command = Command::new(Some(id), Op::KvIncrement { key, by });
                driver.propose(request, command, &mut out)
            }
            ClientOp::Finalize { id } => {
                let json = cairn_storage::cluster_version::record_json(
                    cairn_storage::cluster_version::supported().max,
                );
                let key = cairn_storage::CLUSTER_VERSION_KEY.to_string();
                let op = Op::SystemPut { key, json, expect_revision: None };
                driver.propose(request, Command::new(Some(id), op), &mut out)
            }
        }
        self.routes.insert(request, c);
        self.send_all(node, out.messages);
        for (request, answer) in out.answers {
            self.answered(node, request, answer);
        }
    }

    /// After a refusal or a timeout: try again on the next node, or give up
    /// (safety phase only) and record what is known.
    fn retry_or_give_up(&mut self, c: usize) {
        let liveness = self.liveness;
        let client = &mut self.clients[c];
        client.node += 1;
        let flight = client.in_flight.as_mut().expect("in flight");
        if liveness || flight.attempts < ATTEMPTS_MAX {
            flight.retry_at = flight.retry_at.max(self.now + RETRY_BACKOFF_TICKS);
            return;
        }
        let flight = client.in_flight.take().expect("in flight");
        let client_id = client.id;
        if flight.maybe_applied {
            self.record_unknown(client_id, flight);
        }
    }

    fn answered(&mut self, node: NodeId, request: RequestId, answer: Answer) {
        if let Some(kind) = self.admin_requests.remove(&request) {
            // A change refused (another in flight, no quorum) or made: the
            // configurations are followed through the nodes' outputs.
            if !matches!(answer, Answer::Reconfigured(_) | Answer::Failed(_)) {
                self.violations.push(format!("{kind:?} was answered {answer:?}"));
            }
            return;
        }
        let Some(c) = self.routes.remove(&request) else { return };
        let now = self.now;
        let client = &mut self.clients[c];
        let Some(flight) = client.in_flight.as_mut() else { return };
        if flight.waiting.map(|(r, _, _)| r) != Some(request) {
            return;
        }
        flight.waiting = None;
        let op = flight.op.clone();
        let invoked_at = flight.invoked_at;
        let client_id = client.id;
        let output = match (&op, answer) {
            (ClientOp::OpenSession, Answer::Applied(applied)) => match applied.outcome {
                Outcome::SessionOpened { session } => {
                    client.session = Some(session);
                    client.seq = 0;
                    client.in_flight = None;
                    return;
                }
                other => {
                    self.violations.push(format!("opening a session answered {other:?}"));
                    return;
                }
            },
            (ClientOp::Put { .. }, Answer::Applied(applied)) => match applied.outcome {
                Outcome::KvWritten => KvOutput::Put,
                other => return self.unexpected(c, other),
            },
            (ClientOp::Delete { .. }, Answer::Applied(applied)) => match applied.outcome {
                Outcome::Deleted { existed } => KvOutput::Delete { existed },
                other => return self.unexpected(c, other),
            },
            (ClientOp::Add { .. }, Answer::Applied(applied)) => match applied.outcome {
                Outcome::Counted { value } => KvOutput::Added(value),
                // Before the finalize applied: refused, the same on every
                // replica, and it took no effect.
                Outcome::Failed(cairn_storage::ApplyError::Invalid { .. }) => {
                    self.refused_adds += 1;
                    self.clients[c].in_flight = None;
                    return;
                }
                other => return self.unexpected(c, other),
            },
            (ClientOp::Finalize { .. }, Answer::Applied(applied)) => match applied.outcome {
                Outcome::Replaced { .. } => {
                    self.clients[c].in_flight = None;
                    return;
                }
                other => return self.unexpected(c, other),
            },
            (ClientOp::Get { key }, Answer::ReadReady { .. }) => {
                let driver = self.nodes.get(&node).and_then(|n| n.driver.as_ref()).expect("up");
                let value = driver.state_machine().store().kv_get(key).expect("a local read");
                KvOutput::Get(value)
            }
            (_, Answer::Failed(error)) => {
                let flight = client.in_flight.as_mut().expect("in flight");
                flight.maybe_applied |= !error.is_determinate();
                flight.retry_at = now + RETRY_BACKOFF_TICKS;
                self.retry_or_give_up(c);
                return;
            }
            (op, answer) => {
                self.violations.push(format!("{op:?} was answered {answer:?}"));
                return;
            }
        };
        self.clients[c].in_flight = None;
        let (key, op) = match op {
            ClientOp::Put { key, value, .. } => (key, linearizability::Op::Put { value }),
            ClientOp::Delete { key, .. } => (key, linearizability::Op::Delete),
            ClientOp::Get { key } => (key, linearizability::Op::Get),
            ClientOp::Add { key, by, .. } => (key, linearizability::Op::Add { by }),
            ClientOp::OpenSession | ClientOp::Finalize { .. } => unreachable!("handled above"),
        };
        self.record(client_id, key, op, invoked_at, Completion::Returned { at: now, output });
    }

    /// A write refused by the state machine: only an evicted session can
    /// explain it here, and then an earlier attempt may have applied.
    fn unexpected(&mut self, c: usize, outcome: Outcome) {
        let client = &mut self.clients[c];
        let flight = client.in_flight.take().expect("in flight");
        match outcome {
            Outcome::Failed(cairn_storage::ApplyError::SessionUnknown { .. }) => {
                client.session = None;
                let client_id = client.id;
                self.record_unknown(client_id, flight);
            }
            other => self.violations.push(format!("{:?} was answered {other:?}", flight.op)),
        }
    }

    /// A write whose outcome the client never learned: it may have taken
    /// effect. Reads and session openings leave nothing to record.
    fn record_unknown(&mut self, client: u64, flight: InFlight) {
        let (key, op) = match flight.op {
            ClientOp::Put { key, value, .. } => (key, linearizability::Op::Put { value }),
            ClientOp::Delete { key, .. } => (key, linearizability::Op::Delete),
            ClientOp::Add { key, by, .. } => (key, linearizability::Op::Add { by }),
            ClientOp::Get { .. } | ClientOp::OpenSession | ClientOp::Finalize { .. } => return,
        };
        self.record(client, key, op, flight.invoked_at, Completion::Unknown);
    }

    fn record(
        &mut self,
        client: u64,
        key: String,
        op: linearizability::Op,
        invoked_at: u64,
        completion: Completion,
    ) {
        let entry = Entry { client, key, op, invoked_at, completion };
        if self.trace.is_some() {
            self.trace_bytes(format!("{entry:?}").as_bytes());
        }
        self.history.push(entry);
    }

    // ---- The end ----

    fn converged(&self) -> bool {
        let clients_done =
            self.clients.iter().all(|c| c.in_flight.is_none() && c.final_reads.is_empty());
        let all_serving =
            self.members().all(|(_, n)| n.driver.as_ref().is_some_and(|d| d.blocked().is_none()));
        if !clients_done || !all_serving {
            return false;
        }
        let applied: Vec<u64> = self
            .members()
            .filter_map(|(_, n)| n.driver.as_ref())
            .map(|d| d.state_machine().applied_index())
            .collect();
        let decided = self
            .members()
            .filter_map(|(_, n)| n.driver.as_ref())
            .map(|d| d.replica().decided_index())
            .max()
            .unwrap_or(0);
        applied.iter().all(|a| *a == decided)
    }

    fn progress(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, n)| match &n.driver {
                Some(d) => format!(
                    "{id}{}: applied {} decided {} blocked {:?} leader {:?}",
                    if n.leaving { " (leaving)" } else { "" },
                    d.state_machine().applied_index(),
                    d.replica().decided_index(),
                    d.blocked(),
                    d.replica().leader()
                ),
                None => format!("{id}: down"),
            })
            .collect();
        let waiting = self.clients.iter().filter(|c| c.in_flight.is_some()).count();
        format!("{}; {waiting} clients waiting", nodes.join("; "))
    }

    fn final_checks(&mut self) {
        if !self.violations.is_empty() {
            return;
        }
        let fingerprints: BTreeMap<NodeId, u64> = self
            .members()
            .filter_map(|(id, n)| n.driver.as_ref().map(|d| (*id, d)))
            .map(|(id, d)| (id, d.state_machine().store().state_fingerprint().expect("readable")))
            .collect();
        self.violations.extend(crate::agreement::same_state(&fingerprints));
        match linearizability::check(&self.history) {
            Ok(report) if report.verdict() == Verdict::NotLinearizable => {
                self.violations.push(format!("the history is not linearizable:\n{report}"));
            }
            // A search that ran out of budget checked nothing: the run fails
            // rather than pass unchecked.
            Ok(report) if report.verdict() == Verdict::Unknown => {
                self.unchecked_keys = report.unknown_keys();
                self.violations.push(format!(
                    "the linearizability search ran out of budget on {} keys (unchecked):\n{report}",
                    report.unknown_keys()
                ));
            }
            Ok(_) => {}
            Err(error) => self.violations.push(format!("the history is malformed: {error}")),
        }
    }

    fn report(self) -> Report {
        let unchecked_keys = self.unchecked_keys;
        let mut reads = self.reads;
        for driver in self.nodes.values().filter_map(|n| n.driver.as_ref()) {
            reads += driver.read_stats();
        }
        let snapshots_installed = self.snapshots.installed();
        let snapshots_short_of_gap = self.snapshots.short_of_gap();
        Report {
            seed: self.seed,
            params: self.params,
            violations: self.violations,
            faults: self.faults,
            network: self.net.stats(),
            operations: self.history.len(),
            unknown_outcomes: self
                .history
                .iter()
                .filter(|e| e.completion == Completion::Unknown)
                .count(),
            unchecked_keys,
            adds: self
                .history
                .iter()
                .filter(|e| {
                    matches!(e.completion, Completion::Returned { output: KvOutput::Added(_), .. })
                })
                .count(),
            adds_refused: self.refused_adds,
            snapshots_installed,
            snapshots_short_of_gap,
            syncs: self.syncs,
            probes: self.probes,
            feed_pages: self.feeds.pages,
            feed_events: self.feeds.events,
            feed_moves: self.feeds.moves,
            feed_restarts: self.feeds.restarts,
            configurations: self.configurations,
            reads,
            ticks: self.now,
            trace: self.trace.map(|trace| trace.finish()),
        }
    }

    /// Hands a node's messages to the network, checking that no consensus
    /// message carries more bytes of entries than the run's bound (one
    /// entry always goes).
    fn send_all(&mut self, from: NodeId, messages: Vec<(NodeId, PeerMessage)>) {
        use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
        use omnipaxos::messages::Message;
        use omnipaxos::storage::Entry;
        for (to, message) in messages {
            self.promises.sent(from, &message);
            if let PeerMessage::Paxos {
                message: Message::SequencePaxos(PaxosMessage { msg, .. }),
                ..
            } = &message
            {
                match msg {
                    PaxosMsg::AcceptSync(_) => self.syncs += 1,
                    PaxosMsg::Promise(promise) if promise.log_sync.is_some() => self.syncs += 1,
                    PaxosMsg::AcceptDecide(accept) if accept.entries.is_empty() => self.probes += 1,
                    _ => {}
                }
            }
            let entries = match &message {
                PeerMessage::Paxos { message, .. } => {
                    cairn_consensus::replica::batched_entries(message)
                }
                _ => None,
            };
            if let Some(entries) = entries.filter(|entries| entries.len() > 1) {
                let bytes: usize = entries.iter().map(Entry::message_bytes).sum();
                if bytes > self.params.message_entries_bytes_max {
                    let kind = match &message {
                        PeerMessage::Paxos { message: Message::SequencePaxos(m), .. } => {
                            format!("{:?}", m.msg).chars().take_while(|c| *c != '(').collect()
                        }
                        _ => String::new(),
                    };
                    self.violations.push(format!(
                        "t={}: node {from} sent {} entries of {bytes} bytes in one {kind} to \
                         node {to} (bound {})",
                        self.now,
                        entries.len(),
                        self.params.message_entries_bytes_max
                    ));
                }
            }
            self.net.send(&mut self.rng, self.now, from, to, message);
        }
    }

    fn trace_message(&mut self, from: NodeId, to: NodeId, message: &PeerMessage) {
        let bytes = postcard::to_stdvec(message).unwrap_or_default();
        self.trace_bytes(&[from as u8, to as u8]);
        self.trace_bytes(&self.now.to_le_bytes());
        self.trace_bytes(&bytes);
    }

    fn trace_bytes(&mut self, bytes: &[u8]) {
        if let Some(trace) = &mut self.trace {
            trace.write(bytes);
        }
    }
}

impl InFlight {
    fn new(op: ClientOp, now: u64) -> InFlight {
        InFlight {
            op,
            invoked_at: now,
            attempts: 0,
            maybe_applied: false,
            waiting: None,
            retry_at: now,
        }
    }
}
