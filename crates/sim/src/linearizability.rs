//! A linearizability checker for client histories of Cairn's key-value space.
//!
//! The simulator records what its clients saw: for every operation, which
//! client sent it, on which key, the tick it was invoked at and the tick and
//! output it returned with. [`check`] decides whether one total order of those
//! operations exists that both respects real time (an operation that returned
//! before another was invoked comes first) and gives every operation the
//! output that a single copy of the key-value space would have given. That is
//! linearizability; a history that is not linearizable is a bug in the system
//! (or in the recording).
//!
//! # Model
//!
//! Each key is a register holding `Option<Vec<u8>>`, absent at first. `Put`
//! sets it and outputs nothing; `Get` outputs it; `Delete` clears it and
//! outputs whether it held a value. A counter key takes `Add` (the state
//! machine's increment) and `Get` only: `Add` adds to the decimal integer
//! it holds (absent: 0) and outputs the sum. Counters whose value would
//! reach `i64::MIN` or `i64::MAX` are outside the model. Linearizability is compositional: a
//! history is linearizable if and only if the sub-history of every key is. So
//! each key is checked alone, keys in sorted order, and the report does not
//! depend on how the history interleaves keys.
//!
//! # What the caller records
//!
//! - An operation that returned: [`Completion::Returned`] with its output. It
//!   may return at the tick it was invoked at, never before
//!   ([`HistoryError::ReturnBeforeInvocation`]); its output must be of its
//!   operation's kind ([`HistoryError::OutputMismatch`]).
//! - An operation whose outcome its client never learned (a timeout, an
//!   indeterminate error, a crash): [`Completion::Unknown`]. It may have taken
//!   effect at any moment after its invocation, or never. The checker treats
//!   it as returning at infinity with whatever output fits: it may be
//!   linearized anywhere after its invocation, including after everything
//!   else, which for every observed output is the same as never having
//!   happened. A `Get` of unknown outcome constrains nothing and changes
//!   nothing: the caller may leave it out, and the checker drops it.
//! - An operation refused determinately (the system answered that it did not
//!   and will never take effect): not recorded at all.
//!
//! An unknown write that no returned operation can have observed is left out
//! too ([`KeyReport::dropped`]): a put none of whose possible readers returned
//! at or after its invocation (reads of its value, deletes that found a
//! value), a delete none of whose possible readers did (reads of no value,
//! deletes that found none). Leaving it out keeps the verdict. In any
//! linearization, what directly follows such a write cannot be one of its
//! possible readers (a reader placed after it returned after its
//! invocation), so it is another write whose output and effect do not
//! depend on the state before it (a put, or a delete of unknown outcome), or
//! nothing: removing the write leaves a linearization. And a linearization
//! without it extends to one with it at the end. Each unknown write kept stays a candidate to the end of the
//! search, so this is what keeps histories with many timeouts cheap.
//!
//! # Real time and equal ticks
//!
//! Operation A precedes operation B if and only if A returned at a tick
//! strictly before the tick B was invoked at. Equal ticks are concurrent: the
//! simulator handles the events of one tick in an arbitrary order, so a return
//! and an invocation at the same tick say nothing about which came first.
//! Treating them as concurrent only admits more orders, so it can never turn
//! an order the system may have used into a reported violation.
//!
//! # Search
//!
//! Per key, the classic backtracking search with memoization. The calls and
//! returns of the key's operations are sorted by tick (at equal ticks calls
//! first, which makes them concurrent; unknown returns last) into a doubly
//! linked list. The search walks it from the head:
//! - at a call whose operation the model accepts in the current state, it
//!   linearizes that operation (pushes it, unlinks its call and return)
//!   and starts again from the head, unless the pair (set of linearized
//!   operations, state) was reached before: everything below such a pair has
//!   been explored and failed, so the call is skipped;
//! - at a call the model refuses, it moves on to the next event;
//! - at a return, the operation returning there had to be linearized before
//!   anything invoked later, and nothing that could go next fits: it undoes
//!   the last linearized operation, relinks it, and resumes after its call.
//!
//! An empty list means every operation was linearized; undoing with nothing to
//! undo means no order exists. The memo holds each pair as one word slice: the
//! set as a bitset, then the state as an interned value id.
//!
//! # Budget
//!
//! Deciding linearizability is NP-complete, and a key with many concurrent
//! operations can make the search exponential. Each key's search is bounded
//! by a [`Budget`] of steps (events visited) and memo bytes; a search that
//! runs out gives [`KeyVerdict::Unknown`] for that key. Never a violation it
//! did not prove, never a hang.
//!
//! # Reports
//!
//! For a violation the [`Report`] gives the key, its operations, the longest
//! linearizable prefix the search found, the value that prefix leaves, and the
//! operations that could come next, none of which fits. The culprit is
//! usually among those, or is the last operations of the prefix.
//!
//! # Not here
//!
//! - Other models (documents, tables, sessions): only the key-value register.
//! - Per-client order: the client id only appears in reports; a client with
//!   several operations in flight is checked like several clients.
//! - Other orders of trying candidates (the operation that returns first,
//!   unknown outcomes last): on generated histories they did no better than
//!   invocation order.
//! - A graphical view of the search.

use std::collections::{BTreeMap, HashSet};

/// Events one key's search may visit before its verdict is unknown: about a
/// second in a test build.
mod display;

pub const SEARCH_STEPS_MAX: u64 = 4_000_000;
/// Bytes the memo of one key's search may hold before its verdict is unknown.
pub const SEARCH_MEMO_BYTES_MAX: usize = 256 << 20;
/// Bytes charged per memo entry on top of its words: the boxed slice's
/// pointer and length and the hash table's slot and control byte.
const MEMO_ENTRY_OVERHEAD_BYTES: usize = 32;
/// Last operations of the linearized prefix that a violation shows.
const SHOW_PREFIX_OPS_MAX: usize = 12;
/// Candidates for the next operation that a violation shows.
const SHOW_CANDIDATE_OPS_MAX: usize = 12;
/// Bytes of a value shown before it is cut.
const SHOW_VALUE_BYTES_MAX: usize = 32;

/// Simulated time.
pub type Tick = u64;
/// A simulated client.
pub type ClientId = u64;

/// An operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { value: Vec<u8> },
    Get,
    Delete,
    Add { by: i64 },
}

/// What an operation returned; its variant must match the operation's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Put,
    Get(Option<Vec<u8>>),
    Delete {
        existed: bool,
    },
    /// The counter after the addition.
    Added(i64),
}

/// How an operation ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The client got this output at this tick.
    Returned { at: Tick, output: Output },
    /// The client never learned the outcome: the operation may have taken
    /// effect at any moment after its invocation, or never.
    Unknown,
}

/// One operation of a client history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub client: ClientId,
    pub key: String,
    pub op: Op,
    pub invoked_at: Tick,
    pub completion: Completion,
}

/// A history the checker cannot read: a bug of whoever recorded it. Each
/// names the entry by its index in the history.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "history entry {index} (client {client}, key {key:?}) returns at tick {returned_at}, \
         before its invocation at tick {invoked_at}"
    )]
    ReturnBeforeInvocation {
        index: usize,
        client: ClientId,
        key: String,
        invoked_at: Tick,
        returned_at: Tick,
    },
    #[error(
        "history entry {index} (client {client}, key {key:?}) is a {op} with the output of a {output}"
    )]
    OutputMismatch {
        index: usize,
        client: ClientId,
        key: String,
        op: &'static str,
        output: &'static str,
    },
    #[error(
        "history entry {index} is a {op} on counter key {key:?}, which takes adds and gets only"
    )]
    NotACounterOp { index: usize, key: String, op: &'static str },
}

/// How much one key's search may spend before its verdict is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub steps_max: u64,
    pub memo_bytes_max: usize,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { steps_max: SEARCH_STEPS_MAX, memo_bytes_max: SEARCH_MEMO_BYTES_MAX }
    }
}

/// The verdict on a whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key is linearizable.
    Linearizable,
    /// At least one key is not.
    NotLinearizable,
    /// No key is proven wrong, but the search ran out of budget on some.
    Unknown,
}

/// The part of the budget a search ran out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    Steps,
    MemoBytes,
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    Linearizable,
    NotLinearizable(Box<Violation>),
    Unknown(Exhausted),
}

/// One key's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport {
    pub key: String,
    /// Operations checked.
    pub ops: usize,
    /// Operations of unknown outcome left out: reads, and writes no returned
    /// operation can have observed (see the [module docs](self)).
    pub dropped: usize,
    /// Events the search visited.
    pub steps: u64,
    pub verdict: KeyVerdict,
}

/// An operation of a key's history, with its index in the whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyOp {
    pub index: usize,
    pub entry: Entry,
}

/// Why a key is not linearizable, as far as the search saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// The key's operations that were checked (not those
    /// [dropped](KeyReport::dropped)), by invocation tick, then history index.
    pub ops: Vec<KeyOp>,
    /// The longest linearizable prefix found: positions in `ops`, in
    /// linearization order.
    pub prefix: Vec<usize>,
    /// The key's value after that prefix.
    pub value_after_prefix: Option<Vec<u8>>,
    /// The operations that could come right after the prefix (invoked before
    /// every other remaining operation returned), none of which fits:
    /// positions in `ops`.
    pub candidates: Vec<usize>,
}

/// The checker's answer: one [`KeyReport`] per key, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub keys: Vec<KeyReport>,
}

impl Report {
    pub fn verdict(&self) -> Verdict {
        if self.violations().next().is_some() {
            Verdict::NotLinearizable
        } else if self.unknown_keys() > 0 {
            Verdict::Unknown
        } else {
            Verdict::Linearizable
        }
    }

    pub fn is_linearizable(&self) -> bool {
        self.verdict() == Verdict::Linearizable
    }

    /// The violations, in key order.
    pub fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.keys.iter().filter_map(|key| match &key.verdict {
            KeyVerdict::NotLinearizable(violation) => Some(&**violation),
            _ => None,
        })
    }

    /// Keys whose search ran out of budget.
    pub fn unknown_keys(&self) -> usize {
        self.keys.iter().filter(|key| matches!(key.verdict, KeyVerdict::Unknown(_))).count()
    }

    pub fn key(&self, key: &str) -> Option<&KeyReport> {
        self.keys
            .binary_search_by(|report| report.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.keys[i])
    }
}

/// Checks a history with the default [`Budget`]. What to record, and how
/// equal ticks and unknown outcomes are read: see the [module docs](self).
pub fn check(history: &[Entry]) -> Result<Report, HistoryError> {
    check_with_budget(history, Budget::default())
}

/// Checks a history, each key's search bounded by `budget`.
pub fn check_with_budget(history: &[Entry], budget: Budget) -> Result<Report, HistoryError> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, entry) in history.iter().enumerate() {
        validate(index, entry)?;
        by_key.entry(&entry.key).or_default().push(index);
    }
    for indexes in by_key.values() {
        if !indexes.iter().any(|&i| matches!(history[i].op, Op::Add { .. })) {
            continue;
        }
        if let Some(&index) =
            indexes.iter().find(|&&i| matches!(history[i].op, Op::Put { .. } | Op::Delete))
        {
            let (key, op) = (history[index].key.clone(), op_name(&history[index].op));
            return Err(HistoryError::NotACounterOp { index, key, op });
        }
    }
    let keys = by_key
        .into_iter()
        .map(|(key, indexes)| check_key(key, history, &indexes, budget))
        .collect();
    Ok(Report { keys })
}

fn validate(index: usize, entry: &Entry) -> Result<(), HistoryError> {
    let Completion::Returned { at, output } = &entry.completion else {
        return Ok(());
    };
    let (client, key) = (entry.client, entry.key.clone());
    if *at < entry.invoked_at {
        let invoked_at = entry.invoked_at;
        return Err(HistoryError::ReturnBeforeInvocation {
            index,
            client,
            key,
            invoked_at,
            returned_at: *at,
        });
    }
    let matches = matches!(
        (&entry.op, output),
        (Op::Put { .. }, Output::Put)
            | (Op::Get, Output::Get(_))
            | (Op::Delete, Output::Delete { .. })
            | (Op::Add { .. }, Output::Added(_))
    );
    if !matches {
        let (op, output) = (op_name(&entry.op), output_name(output));
        return Err(HistoryError::OutputMismatch { index, client, key, op, output });
    }
    Ok(())
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Put { .. } => "put",
        Op::Get => "get",
        Op::Delete => "delete",
        Op::Add { .. } => "add",
    }
}

fn output_name(output: &Output) -> &'static str {
    match output {
        Output::Put => "put",
        Output::Get(_) => "get",
        Output::Delete { .. } => "delete",
        Output::Added(_) => "add",
    }
}

fn check_key(key: &str, history: &[Entry], indexes: &[usize], budget: Budget) -> KeyReport {
    let observations = Observations::new(indexes.iter().map(|&i| &history[i]));
    let mut ops: Vec<usize> =
        indexes.iter().copied().filter(|&i| observations.may_matter(&history[i])).collect();
    ops.sort_by_key(|&i| (history[i].invoked_at, i));
    let entries: Vec<&Entry> = ops.iter().map(|&i| &history[i]).collect();
    let model = Model::new(&entries);
    let mut search = Search::new(&entries, &model);
    let outcome = search.run(budget);
    let verdict = match outcome {
        Outcome::Linearizable => KeyVerdict::Linearizable,
        Outcome::Exhausted(exhausted) => KeyVerdict::Unknown(exhausted),
        Outcome::Violation { prefix } => {
            let violation = search.violation(key, history, &ops, &model, prefix);
            KeyVerdict::NotLinearizable(Box::new(violation))
        }
    };
    let (checked, dropped) = (ops.len(), indexes.len() - ops.len());
    KeyReport { key: key.to_string(), ops: checked, dropped, steps: search.steps, verdict }
}

/// What the returned operations of one key observed: the last tick each
/// value, absence and presence was returned at. An operation of unknown
/// outcome matters only if some returned operation may have observed its
/// effect, which it can only have done by returning at or after the tick
/// the operation was invoked at.
struct Observations<'h> {
    value_until: BTreeMap<&'h [u8], Tick>,
    /// Reads of no value and deletes of nothing.
    absent_until: Option<Tick>,
    /// Deletes that found a value.
    present_until: Option<Tick>,
    /// Any returned operation (a counter's adds and reads all observe it).
    any_until: Option<Tick>,
}

impl<'h> Observations<'h> {
    fn new(entries: impl Iterator<Item = &'h Entry>) -> Observations<'h> {
        let mut seen = Observations {
            value_until: BTreeMap::new(),
            absent_until: None,
            present_until: None,
            any_until: None,
        };
        for entry in entries {
            let Completion::Returned { at, output } = &entry.completion else { continue };
            let any = seen.any_until.get_or_insert(*at);
            *any = (*any).max(*at);
            let until = match output {
                Output::Put | Output::Added(_) => continue,
                Output::Get(Some(value)) => seen.value_until.entry(value).or_insert(*at),
                Output::Get(None) | Output::Delete { existed: false } => {
                    seen.absent_until.get_or_insert(*at)
                }
                Output::Delete { existed: true } => seen.present_until.get_or_insert(*at),
            };
            *until = (*until).max(*at);
        }
        seen
    }

    /// Whether the outcome of `entry` may bear on what was returned: always
    /// for a returned operation, never for a read of unknown outcome, and for
    /// a write of unknown outcome only if an operation that returned at or
    /// after its invocation may have observed the state it leaves. Why
    /// dropping the others keeps the verdict: see the module docs.
    fn may_matter(&self, entry: &Entry) -> bool {
        let invoked_at = entry.invoked_at;
        let since = |until: Option<Tick>| until.is_some_and(|until| until >= invoked_at);
        match (&entry.op, &entry.completion) {
            (_, Completion::Returned { .. }) => true,
            (Op::Get, Completion::Unknown) => false,
            (Op::Put { value }, Completion::Unknown) => {
                since(self.value_until.get(&value[..]).copied()) || since(self.present_until)
            }
            (Op::Delete, Completion::Unknown) => since(self.absent_until),
            // Whatever follows an add on its counter depends on it.
            (Op::Add { .. }, Completion::Unknown) => since(self.any_until),
        }
    }
}

/// The register's state: 0 for absent, else a value id from [`Model`].
type State = u64;
const ABSENT: State = 0;

/// One operation, compiled against the key's interned values.
#[derive(Clone, Copy, Debug)]
enum Step {
    Put(State),
    /// The state the get must find.
    Get(State),
    /// `None`: the outcome is unknown and any answer fits.
    Delete(Option<bool>),
    /// An add to a counter, with the sum it returned (`None`: unknown).
    Add {
        by: i64,
        sum: Option<i64>,
    },
}

impl Step {
    /// The state after the step, or `None` if its output cannot come from
    /// `state`.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Put(value) => Some(value),
            Step::Get(expected) => (expected == state).then_some(state),
            Step::Delete(None) => Some(ABSENT),
            Step::Delete(Some(existed)) => (existed == (state != ABSENT)).then_some(ABSENT),
            Step::Add { by, sum } => {
                let after = counter_of(state)?.checked_add(by).and_then(counter_state);
                match sum {
                    Some(sum) => after.filter(|&after| counter_state(sum) == Some(after)),
                    // Unknown: it applied, or the state machine refused it.
                    None => Some(after.unwrap_or(state)),
                }
            }
        }
    }
}

/// A counter key's state: [`ABSENT`], a value's zigzag code plus one, or
/// [`NOT_A_COUNTER`]. `None` for `i64::MIN` and `i64::MAX`, outside the
/// model.
fn counter_state(value: i64) -> Option<State> {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    zigzag.checked_add(1).filter(|&state| state != NOT_A_COUNTER)
}

/// The counter a state holds (absent: 0); `None` for [`NOT_A_COUNTER`].
fn counter_of(state: State) -> Option<i64> {
    match state {
        ABSENT => Some(0),
        NOT_A_COUNTER => None,
        code => {
            let zigzag = code - 1;
            Some(((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64))
        }
    }
}

/// A counter key's state for a read of a value that is no counter: no
/// add fits it, so a read of one is a violation.
const NOT_A_COUNTER: State = State::MAX;

/// A key's values, interned (ids from 1 in order of first appearance), and
/// its operations as [`Step`]s.
struct Model<'h> {
    values: Vec<&'h [u8]>,
    steps: Vec<Step>,
    /// A counter key: states are [`counter_state`]s, not interned values.
    counter: bool,
}

impl<'h> Model<'h> {
    fn new(entries: &[&'h Entry]) -> Model<'h> {
        let counter = entries.iter().any(|entry| matches!(entry.op, Op::Add { .. }));
        let mut model =
            Model { values: Vec::new(), steps: Vec::with_capacity(entries.len()), counter };
        let mut ids: BTreeMap<&'h [u8], State> = BTreeMap::new();
        for entry in entries {
            let mut intern = |value: &'h [u8]| {
                *ids.entry(value).or_insert_with(|| {
                    model.values.push(value);
                    model.values.len() as State
                })
            };
            let step = match (&entry.op, &entry.completion) {
                (Op::Get, Completion::Returned { output: Output::Get(value), .. }) if counter => {
                    let parsed =
                        value.as_deref().map(cairn_storage::cluster_version::parse_counter);
                    Step::Get(match parsed {
                        None => ABSENT,
                        Some(parsed) => parsed.and_then(counter_state).unwrap_or(NOT_A_COUNTER),
                    })
                }
                (Op::Add { by }, Completion::Returned { output: Output::Added(sum), .. }) => {
                    Step::Add { by: *by, sum: Some(*sum) }
                }
                (Op::Add { by }, Completion::Unknown) => Step::Add { by: *by, sum: None },
                (Op::Put { value }, _) => Step::Put(intern(value)),
                (Op::Get, Completion::Returned { output: Output::Get(value), .. }) => {
                    Step::Get(value.as_deref().map_or(ABSENT, &mut intern))
                }
                (Op::Delete, Completion::Returned { output: Output::Delete { existed }, .. }) => {
                    Step::Delete(Some(*existed))
                }
                (Op::Delete, Completion::Unknown) => Step::Delete(None),
                // Unknown gets were dropped and outputs were validated.
                _ => unreachable!("unchecked history entry reached the model"),
            };
            model.steps.push(step);
        }
        model
    }

    fn value(&self, state: State) -> Option<Vec<u8>> {
        if self.counter {
            let text = counter_of(state).map_or("(not a counter)".to_string(), |v| v.to_string());
            return (state != ABSENT).then(|| text.into_bytes());
        }
        (state != ABSENT).then(|| self.values[state as usize - 1].to_vec())
    }
}

/// The pairs (linearized set, state) the search has entered, and the current
/// set. In a depth-first search, a pair entered before and met again has been
/// explored to the end without success.
struct Memo {
    seen: HashSet<Box<[u64]>>,
    /// The current set as a bitset, then a state: the key looked up.
    key: Vec<u64>,
    bytes: usize,
    bytes_max: usize,
}

impl Memo {
    fn new(ops: usize, bytes_max: usize) -> Memo {
        Memo { seen: HashSet::new(), key: vec![0; ops.div_ceil(64) + 1], bytes: 0, bytes_max }
    }

    /// Adds `op` to the set with state `after`: false (set unchanged) if that
    /// pair was entered before.
    fn enter(&mut self, op: usize, after: State) -> Result<bool, Exhausted> {
        let words = self.key.len() - 1;
        debug_assert!(self.key[op / 64] & (1 << (op % 64)) == 0, "entered twice");
        self.key[op / 64] |= 1 << (op % 64);
        self.key[words] = after;
        if self.seen.contains(&self.key[..]) {
            self.leave(op);
            return Ok(false);
        }
        self.bytes += self.key.len() * 8 + MEMO_ENTRY_OVERHEAD_BYTES;
        if self.bytes > self.bytes_max {
            return Err(Exhausted::MemoBytes);
        }
        self.seen.insert(self.key.clone().into_boxed_slice());
        Ok(true)
    }

    /// Takes `op` out of the set.
    fn leave(&mut self, op: usize) {
        debug_assert!(self.key[op / 64] & (1 << (op % 64)) != 0, "left without entering");
        self.key[op / 64] &= !(1 << (op % 64));
    }
}

/// The head sentinel of the event list.
const HEAD: usize = 0;

enum Outcome {
    Linearizable,
    /// The longest prefix found, as operation positions.
    Violation {
        prefix: Vec<usize>,
    },
    Exhausted(Exhausted),
}

/// The search over one key. Nodes of the event list: [`HEAD`], then the
/// events in order, then a tail sentinel.
struct Search<'m> {
    steps_of: &'m [Step],
    call_node: Vec<usize>,
    return_node: Vec<usize>,
    /// The operation of each event node (sentinels: unused).
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    prev: Vec<usize>,
    next: Vec<usize>,
    tail: usize,
    steps: u64,
}

impl<'m> Search<'m> {
    fn new(entries: &[&Entry], model: &'m Model) -> Search<'m> {
        let ops = entries.len();
        // Sort key: (tick, 0 for call or 1 for return, operation). Unknown
        // returns come after every finite tick.
        let mut events: Vec<(u128, u8, usize)> = Vec::with_capacity(2 * ops);
        for (op, entry) in entries.iter().enumerate() {
            events.push((u128::from(entry.invoked_at), 0, op));
            let returned_at = match entry.completion {
                Completion::Returned { at, .. } => u128::from(at),
                Completion::Unknown => u128::from(Tick::MAX) + 1,
            };
            events.push((returned_at, 1, op));
        }
        events.sort_unstable();
        let tail = events.len() + 1;
        let mut search = Search {
            steps_of: &model.steps,
            call_node: vec![0; ops],
            return_node: vec![0; ops],
            node_op: vec![0; tail + 1],
            node_is_call: vec![false; tail + 1],
            prev: (0..=tail).map(|node| node.saturating_sub(1)).collect(),
            next: (0..=tail).map(|node| (node + 1).min(tail)).collect(),
            tail,
            steps: 0,
        };
        for (position, &(_, kind, op)) in events.iter().enumerate() {
            let node = position + 1;
            search.node_op[node] = op;
            search.node_is_call[node] = kind == 0;
            if kind == 0 {
                search.call_node[op] = node;
            } else {
                search.return_node[op] = node;
            }
        }
        search
    }

    fn run(&mut self, budget: Budget) -> Outcome {
        let ops = self.call_node.len();
        let mut memo = Memo::new(ops, budget.memo_bytes_max);
        // The linearized operations, each with the state before it.
        let mut stack: Vec<(usize, State)> = Vec::new();
        let mut longest: Vec<usize> = Vec::new();
        let mut state = ABSENT;
        let mut node = self.next[HEAD];
        while self.next[HEAD] != self.tail {
            assert!(node != HEAD && node != self.tail, "walked off the event list");
            if self.steps >= budget.steps_max {
                return Outcome::Exhausted(Exhausted::Steps);
            }
            self.steps += 1;
            let op = self.node_op[node];
            if !self.node_is_call[node] {
                if stack.len() > longest.len() {
                    longest = stack.iter().map(|&(op, _)| op).collect();
                }
                let Some((undone, before)) = stack.pop() else {
                    return Outcome::Violation { prefix: longest };
                };
                memo.leave(undone);
                state = before;
                self.unlift(undone);
                node = self.next[self.call_node[undone]];
                continue;
            }
            if let Some(after) = self.steps_of[op].apply(state) {
                match memo.enter(op, after) {
                    Err(exhausted) => return Outcome::Exhausted(exhausted),
                    Ok(false) => {}
                    Ok(true) => {
                        stack.push((op, state));
                        state = after;
                        self.lift(op);
                        node = self.next[HEAD];
                        continue;
                    }
                }
            }
            node = self.next[node];
        }
        assert_eq!(stack.len(), ops, "an empty event list has every operation linearized");
        Outcome::Linearizable
    }

    /// Unlinks an operation's call and return (in that order).
    fn lift(&mut self, op: usize) {
        for node in [self.call_node[op], self.return_node[op]] {
            let (prev, next) = (self.prev[node], self.next[node]);
            debug_assert!(self.next[prev] == node && self.prev[next] == node);
            self.next[prev] = next;
            self.prev[next] = prev;
        }
    }

    /// Relinks what [`Search::lift`] unlinked, in the reverse order, into the
    /// places the unlinked nodes still point at.
    fn unlift(&mut self, op: usize) {
        for node in [self.return_node[op], self.call_node[op]] {
            let (prev, next) = (self.prev[node], self.next[node]);
            debug_assert!(self.next[prev] == next && self.prev[next] == prev);
            self.next[prev] = node;
            self.prev[next] = node;
        }
    }

    /// The violation report: the prefix, the value it leaves, and the
    /// operations invoked before the first return among the rest (with the
    /// whole list linked again, list order is event order).
    fn violation(
        &self,
        key: &str,
        history: &[Entry],
        ops: &[usize],
        model: &Model,
        prefix: Vec<usize>,
    ) -> Violation {
        let mut linearized = vec![false; ops.len()];
        let mut state = ABSENT;
        for &op in &prefix {
            linearized[op] = true;
            state = self.steps_of[op].apply(state).expect("the prefix was linearized");
        }
        let remaining = (0..ops.len()).filter(|&op| !linearized[op]);
        let first_return =
            remaining.clone().map(|op| self.return_node[op]).min().unwrap_or(self.tail);
        let candidates = remaining.filter(|&op| self.call_node[op] < first_return).collect();
        Violation {
            key: key.to_string(),
            ops: ops.iter().map(|&index| KeyOp { index, entry: history[index].clone() }).collect(),
            prefix,
            value_after_prefix: model.value(state),
            candidates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::display::ShowValue;
    use super::*;

    fn put(invoked_at: Tick, value: &str, at: Tick) -> Entry {
        let op = Op::Put { value: value.into() };
        let completion = Completion::Returned { at, output: Output::Put };
        Entry { client: 1, key: "k".into(), op, invoked_at, completion }
    }

    #[test]
    fn steps_follow_the_register() {
        assert_eq!(Step::Put(2).apply(ABSENT), Some(2));
        assert_eq!(Step::Get(2).apply(2), Some(2));
        assert_eq!(Step::Get(ABSENT).apply(2), None);
        assert_eq!(Step::Delete(Some(true)).apply(2), Some(ABSENT));
        assert_eq!(Step::Delete(Some(true)).apply(ABSENT), None);
        assert_eq!(Step::Delete(Some(false)).apply(ABSENT), Some(ABSENT));
        assert_eq!(Step::Delete(None).apply(2), Some(ABSENT));
    }

    #[test]
    fn lift_and_unlift_restore_the_list() {
        let history = [put(0, "a", 10), put(5, "b", 6), put(7, "c", 8)];
        let entries: Vec<&Entry> = history.iter().collect();
        let model = Model::new(&entries);
        let mut search = Search::new(&entries, &model);
        let (prev, next) = (search.prev.clone(), search.next.clone());
        search.lift(1);
        search.lift(0);
        assert_eq!(search.next[HEAD], search.call_node[2]);
        search.unlift(0);
        search.unlift(1);
        assert_eq!((search.prev, search.next), (prev, next));
    }

    #[test]
    fn equal_ticks_sort_calls_first() {
        let history = [put(0, "a", 5), put(5, "b", 9)];
        let entries: Vec<&Entry> = history.iter().collect();
        let model = Model::new(&entries);
        let search = Search::new(&entries, &model);
        assert!(search.call_node[1] < search.return_node[0]);
    }

    #[test]
    fn values_show_as_text_or_hex() {
        assert_eq!(ShowValue(Some(b"ab")).to_string(), "\"ab\"");
        assert_eq!(ShowValue(Some(&[0, 255])).to_string(), "0x00ff");
        assert_eq!(ShowValue(None).to_string(), "no value");
        let long = [b'x'; SHOW_VALUE_BYTES_MAX + 1];
        assert!(ShowValue(Some(&long)).to_string().ends_with("\"..."));
    }
}
