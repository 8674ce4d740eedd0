//! The linearizability checker on small hand-written histories, each a
//! scenario that must pass or be caught, then on generated ones: a random
//! sequential execution against an ordered map, widened into concurrent
//! intervals around each operation's linearization point, must always pass,
//! and must fail once one read is made to return a value nobody wrote.
//!
//! Ranges in the scenarios are `invoked..returned` in ticks. On failure
//! proptest prints the minimal failing case; set `PROPTEST_CASES=N` for a
//! longer run: `PROPTEST_CASES=1000 cargo test --workspace --test linearizability`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use cairn_sim::linearizability::{
    check, check_with_budget, Budget, ClientId, Completion, Entry, Exhausted, HistoryError,
    KeyVerdict, Op, Output, Report, Tick, Verdict,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

fn returned(key: &str, op: Op, ticks: Range<Tick>, output: Output) -> Entry {
    let completion = Completion::Returned { at: ticks.end, output };
    Entry { client: 1, key: key.into(), op, invoked_at: ticks.start, completion }
}

fn unknown(key: &str, op: Op, invoked_at: Tick) -> Entry {
    Entry { client: 1, key: key.into(), op, invoked_at, completion: Completion::Unknown }
}

fn put(key: &str, value: &str, ticks: Range<Tick>) -> Entry {
    returned(key, Op::Put { value: value.into() }, ticks, Output::Put)
}

fn get(key: &str, value: Option<&str>, ticks: Range<Tick>) -> Entry {
    returned(key, Op::Get, ticks, Output::Get(value.map(Into::into)))
}

fn delete(key: &str, existed: bool, ticks: Range<Tick>) -> Entry {
    returned(key, Op::Delete, ticks, Output::Delete { existed })
}

fn put_unknown(key: &str, value: &str, invoked_at: Tick) -> Entry {
    unknown(key, Op::Put { value: value.into() }, invoked_at)
}

fn checked(history: &[Entry]) -> Report {
    check(history).expect("the history is well formed")
}

fn assert_linearizable(history: &[Entry]) {
    let report = checked(history);
    assert!(report.is_linearizable(), "expected linearizable, got:\n{report}");
}

/// Asserts that exactly `key` violates, and that the report says so.
fn assert_violation_on(history: &[Entry], key: &str) -> Report {
    let report = checked(history);
    assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report}");
    let keys: Vec<&str> = report.violations().map(|violation| violation.key.as_str()).collect();
    assert_eq!(keys, [key], "{report}");
    assert!(report.to_string().contains(&format!("key {key:?}: not linearizable")), "{report}");
    report
}

// One client, one operation at a time: the register's own answers.
#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&[
        get("k", None, 0..1),
        put("k", "a", 2..3),
        get("k", Some("a"), 4..5),
        put("k", "b", 6..7),
        get("k", Some("b"), 8..9),
        delete("k", true, 10..11),
        get("k", None, 12..13),
        delete("k", false, 14..15),
    ]);
}

// A read concurrent with a write may see the value before it or after it.
#[test]
fn concurrent_read_sees_old_or_new_value() {
    for seen in ["a", "b"] {
        assert_linearizable(&[
            put("k", "a", 0..1),
            put("k", "b", 2..10),
            get("k", Some(seen), 3..4),
        ]);
    }
}

// Overlapping reads may see a concurrent write in either order (reads that do
// not overlap may not: `reads_going_back_in_time_are_caught`).
#[test]
fn concurrent_reads_may_disagree_on_a_concurrent_write() {
    assert_linearizable(&[
        put("k", "a", 0..1),
        put("k", "b", 2..20),
        get("k", Some("b"), 3..8),
        get("k", Some("a"), 5..9),
    ]);
}

#[test]
fn read_of_a_value_never_written_is_caught() {
    assert_violation_on(&[put("k", "a", 0..1), get("k", Some("z"), 2..3)], "k");
}

// The write completed before the read was invoked: the read must see it.
#[test]
fn stale_read_after_a_completed_write_is_caught() {
    assert_violation_on(&[put("k", "a", 0..1), get("k", None, 2..3)], "k");
}

#[test]
fn lost_write_is_caught() {
    let report = assert_violation_on(
        &[put("k", "a", 0..1), put("k", "b", 2..3), get("k", Some("a"), 4..5)],
        "k",
    );
    let violation = report.violations().next().expect("one violation");
    assert_eq!(violation.value_after_prefix.as_deref(), Some(&b"b"[..]));
    let text = report.to_string();
    assert!(text.contains("put \"b\"") && text.contains("get -> \"a\""), "{text}");
}

// Once a read saw the new value, a later read may not see the old one.
#[test]
fn reads_going_back_in_time_are_caught() {
    assert_violation_on(
        &[
            put("k", "a", 0..1),
            put("k", "b", 2..20),
            get("k", Some("b"), 3..4),
            get("k", Some("a"), 5..6),
        ],
        "k",
    );
}

#[test]
fn delete_missing_a_completed_write_is_caught() {
    assert_violation_on(&[put("k", "a", 0..1), delete("k", false, 2..3)], "k");
}

// A return and an invocation at the same tick are concurrent: the simulator
// orders the events of one tick arbitrarily.
#[test]
fn equal_ticks_are_concurrent() {
    assert_linearizable(&[put("k", "a", 0..5), get("k", None, 5..7)]);
    assert_violation_on(&[put("k", "a", 0..5), get("k", None, 6..7)], "k");
}

// A write whose outcome the client never learned may have happened or not.
#[test]
fn unknown_write_may_be_seen_or_not() {
    for seen in ["a", "b"] {
        assert_linearizable(&[
            put("k", "a", 0..1),
            put_unknown("k", "b", 2),
            get("k", Some(seen), 10..11),
        ]);
    }
}

// ...but once seen it has happened, for every later read.
#[test]
fn unknown_write_seen_then_unseen_is_caught() {
    assert_violation_on(
        &[
            put("k", "a", 0..1),
            put_unknown("k", "b", 2),
            get("k", Some("b"), 10..11),
            get("k", Some("a"), 12..13),
        ],
        "k",
    );
}

// An unknown write cannot take effect before it was invoked.
#[test]
fn unknown_write_seen_before_its_invocation_is_caught() {
    assert_violation_on(&[get("k", Some("b"), 0..1), put_unknown("k", "b", 5)], "k");
}

#[test]
fn unknown_delete_may_have_deleted_or_not() {
    for seen in [None, Some("a")] {
        assert_linearizable(&[
            put("k", "a", 0..1),
            unknown("k", Op::Delete, 2),
            get("k", seen, 5..6),
        ]);
    }
}

// A read of unknown outcome says nothing; the caller may keep it.
#[test]
fn unknown_read_is_unconstrained() {
    let report =
        checked(&[put("k", "a", 0..1), unknown("k", Op::Get, 2), get("k", Some("a"), 3..4)]);
    assert!(report.is_linearizable(), "{report}");
    assert_eq!(report.key("k").map(|key| key.ops), Some(2));
}

// An unknown write that no returned operation can have observed cannot
// change the verdict, and is left out of the search.
#[test]
fn unobserved_unknown_writes_are_dropped() {
    let report = checked(&[
        put("k", "a", 0..1),
        put_unknown("k", "lost", 2),
        unknown("k", Op::Delete, 3),
        get("k", Some("a"), 1..2),
        put("k", "b", 4..5),
    ]);
    assert!(report.is_linearizable(), "{report}");
    assert_eq!(report.key("k").map(|key| (key.ops, key.dropped)), Some((3, 2)));
}

// A delete that found a value may have found an unknown write's.
#[test]
fn unknown_write_may_explain_a_delete() {
    assert_linearizable(&[put_unknown("k", "a", 0), delete("k", true, 5..6)]);
}

// Keys are independent: one key's violation is attributed to it alone.
#[test]
fn violation_is_attributed_to_its_key() {
    let report = assert_violation_on(
        &[
            put("a", "1", 0..1),
            put("b", "1", 0..1),
            put("c", "1", 0..1),
            get("a", Some("1"), 2..3),
            get("b", None, 2..3),
            get("c", Some("1"), 2..3),
        ],
        "b",
    );
    let keys: Vec<&str> = report.keys.iter().map(|key| key.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    for key in ["a", "c"] {
        assert_eq!(report.key(key).map(|key| &key.verdict), Some(&KeyVerdict::Linearizable));
    }
}

/// Writes and reads on one key, all concurrent: linearizable (each read right
/// after its write), but the writes come first in the event list, so the
/// search tries many orders of them before it pairs them with the reads.
fn all_concurrent(writes: usize) -> Vec<Entry> {
    let values: Vec<String> = (0..writes).map(|i| format!("v{i}")).collect();
    let puts = values.iter().map(|value| put("k", value, 0..100));
    let gets = values.iter().map(|value| get("k", Some(value), 0..100));
    puts.chain(gets).collect()
}

// A search that runs out of budget says unknown, never a wrong verdict; a
// key that fits in the budget still gets its verdict.
#[test]
fn exhausted_budget_gives_unknown() {
    let history = all_concurrent(8);
    for (budget, exhausted) in [
        (Budget { steps_max: 50, ..Budget::default() }, Exhausted::Steps),
        (Budget { memo_bytes_max: 200, ..Budget::default() }, Exhausted::MemoBytes),
    ] {
        let mut with_other_key = history.clone();
        with_other_key.push(put("other", "a", 0..1));
        let report = check_with_budget(&with_other_key, budget).expect("well formed");
        assert_eq!(report.verdict(), Verdict::Unknown, "{report}");
        assert_eq!(report.unknown_keys(), 1);
        assert_eq!(report.key("k").map(|key| &key.verdict), Some(&KeyVerdict::Unknown(exhausted)));
        assert!(report.to_string().contains("key \"k\": unknown"), "{report}");
    }
    assert_linearizable(&history);
}

// A violation on another key still makes the whole history a violation.
#[test]
fn violation_outranks_unknown() {
    let mut history = all_concurrent(8);
    history.extend([put("other", "a", 0..1), get("other", None, 2..3)]);
    let report = check_with_budget(&history, Budget { steps_max: 50, ..Budget::default() })
        .expect("well formed");
    assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report}");
    assert_eq!(report.unknown_keys(), 1);
}

#[test]
fn malformed_histories_are_refused() {
    let returns_first = Completion::Returned { at: 4, output: Output::Put };
    let backwards =
        [put("k", "a", 0..1), Entry { completion: returns_first, ..put("k", "b", 5..6) }];
    let error = check(&backwards).expect_err("returns before its invocation");
    assert!(matches!(error, HistoryError::ReturnBeforeInvocation { index: 1, .. }), "{error}");
    let mismatched = [returned("k", Op::Get, 0..1, Output::Put)];
    let error = check(&mismatched).expect_err("a get with a put's output");
    assert!(matches!(error, HistoryError::OutputMismatch { index: 0, .. }), "{error}");
    assert!(error.to_string().contains("entry 0"), "{error}");
}

/// Ticks between the linearization points of consecutive generated operations.
const STRIDE_TICKS: Tick = 10;
const CLIENTS: ClientId = 4;

#[derive(Clone, Copy, Debug)]
enum Fate {
    Returned,
    /// Took effect, but its client never learned.
    UnknownApplied,
    /// Never took effect, and its client never learned.
    UnknownLost,
}

/// One operation of a sequential execution, with how far its interval
/// reaches before and after its linearization point.
#[derive(Clone, Debug)]
struct Planned {
    client: ClientId,
    key: usize,
    op: Op,
    before_ticks: Tick,
    after_ticks: Tick,
    fate: Fate,
}

/// Operations over `keys` keys writing one of `values` values, each interval
/// reaching up to `width_ticks_max` either side of its point.
fn planned(keys: usize, values: u8, width_ticks_max: Tick) -> impl Strategy<Value = Planned> {
    let op = prop_oneof![
        3 => (0..values).prop_map(|v| Op::Put { value: format!("v{v}").into_bytes() }),
        4 => Just(Op::Get),
        1 => Just(Op::Delete),
    ];
    let fate = prop_oneof![
        16 => Just(Fate::Returned),
        1 => Just(Fate::UnknownApplied),
        1 => Just(Fate::UnknownLost),
    ];
    let width = 0..=width_ticks_max;
    (0..CLIENTS, 0..keys, op, width.clone(), width, fate).prop_map(
        |(client, key, op, before_ticks, after_ticks, fate)| Planned {
            client,
            key,
            op,
            before_ticks,
            after_ticks,
            fate,
        },
    )
}

/// Runs the plan in order against an ordered map, operation `i` taking
/// effect at tick `STRIDE_TICKS * (i + 1)` (unless lost), and records what
/// its clients saw: intervals that contain those points.
fn history(plan: &[Planned]) -> Vec<Entry> {
    let mut map: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut history = Vec::with_capacity(plan.len());
    for (i, planned) in plan.iter().enumerate() {
        let point = STRIDE_TICKS * (i as Tick + 1);
        let output = match (&planned.fate, &planned.op) {
            (Fate::UnknownLost, _) => None,
            (_, Op::Put { value }) => {
                map.insert(planned.key, value.clone());
                Some(Output::Put)
            }
            (_, Op::Get) => Some(Output::Get(map.get(&planned.key).cloned())),
            (_, Op::Delete) => Some(Output::Delete { existed: map.remove(&planned.key).is_some() }),
            (_, Op::Add { .. }) => unreachable!("plans hold registers only"),
        };
        let completion = match (planned.fate, output) {
            (Fate::Returned, Some(output)) => {
                Completion::Returned { at: point + planned.after_ticks, output }
            }
            _ => Completion::Unknown,
        };
        history.push(Entry {
            client: planned.client,
            key: format!("k{}", planned.key),
            op: planned.op.clone(),
            invoked_at: point.saturating_sub(planned.before_ticks),
            completion,
        });
    }
    history
}

/// Whether some order of `history` (one key) respects real time and the
/// model, trying every order: the oracle for small histories. `step` gives
/// the state after an entry, or `None` if its output cannot come from the
/// state; an operation of unknown outcome may take any place after its
/// invocation or none, with any output.
fn brute_force<S: Clone>(
    history: &[Entry],
    done: &mut Vec<bool>,
    state: S,
    step: &impl Fn(&Entry, &S) -> Option<S>,
) -> bool {
    if done.iter().all(|&done| done) {
        return true;
    }
    let returned_at = |entry: &Entry| match entry.completion {
        Completion::Returned { at, .. } => Some(at),
        Completion::Unknown => None,
    };
    for (i, entry) in history.iter().enumerate() {
        let must_wait = history.iter().zip(done.iter()).any(|(other, &other_done)| {
            !other_done && returned_at(other).is_some_and(|at| at < entry.invoked_at)
        });
        if done[i] || must_wait {
            continue;
        }
        let Some(after) = step(entry, &state) else { continue };
        done[i] = true;
        let found = brute_force(history, done, after, step);
        done[i] = false;
        if found {
            return true;
        }
    }
    // Unknown operations may also never take effect.
    history.iter().zip(done.iter()).all(|(entry, &done)| done || returned_at(entry).is_none())
}

fn output(entry: &Entry) -> Option<&Output> {
    match &entry.completion {
        Completion::Returned { output, .. } => Some(output),
        Completion::Unknown => None,
    }
}

/// [`brute_force`] for a register: puts, reads and deletes.
fn linearizable_by_brute_force(history: &[Entry]) -> bool {
    let step = |entry: &Entry, value: &Option<Vec<u8>>| match (&entry.op, output(entry)) {
        (Op::Put { value }, _) => Some(Some(value.clone())),
        (Op::Get, None) => Some(value.clone()),
        (Op::Get, Some(Output::Get(read))) => (read == value).then(|| value.clone()),
        (Op::Delete, None) => Some(None),
        (Op::Delete, Some(Output::Delete { existed })) => {
            (*existed == value.is_some()).then_some(None)
        }
        (Op::Add { .. }, _) => unreachable!("register histories hold no adds"),
        (_, Some(_)) => unreachable!("generated outputs match their operations"),
    };
    brute_force(history, &mut vec![false; history.len()], None, &step)
}

/// [`brute_force`] for a counter: adds and reads.
fn counter_linearizable_by_brute_force(history: &[Entry]) -> bool {
    let step = |entry: &Entry, value: &Option<i64>| {
        let sum = value.unwrap_or(0);
        match (&entry.op, output(entry)) {
            (Op::Add { by }, None) => Some(Some(sum + by)),
            (Op::Add { by }, Some(Output::Added(got))) => (*got == sum + by).then_some(Some(*got)),
            (Op::Get, None) => Some(*value),
            (Op::Get, Some(Output::Get(read))) => {
                let shown = value.map(|v| v.to_string().into_bytes());
                (*read == shown).then_some(*value)
            }
            _ => unreachable!("counter histories hold adds and reads"),
        }
    };
    brute_force(history, &mut vec![false; history.len()], None, &step)
}

/// A small history of one key with arbitrary outputs, from `op`'s pairs of
/// an operation and its output; each entry's outcome is unknown with
/// probability `unknown`.
fn one_key_history(
    key: &'static str,
    op: impl Strategy<Value = (Op, Output)>,
    unknown: f64,
) -> impl Strategy<Value = Vec<Entry>> {
    let entry = (op, 0..8 as Tick, 0..4 as Tick, prop::bool::weighted(unknown)).prop_map(
        move |((op, output), invoked_at, width, unknown)| Entry {
            client: 1,
            key: key.into(),
            op,
            invoked_at,
            completion: if unknown {
                Completion::Unknown
            } else {
                Completion::Returned { at: invoked_at + width, output }
            },
        },
    );
    prop::collection::vec(entry, 1..=6)
}

/// A small counter history with arbitrary outputs: linearizable or not.
fn arbitrary_counter_history() -> impl Strategy<Value = Vec<Entry>> {
    let read = prop::option::of(0..6i64);
    let op = prop_oneof![
        (1..3i64, 0..6i64).prop_map(|(by, sum)| (Op::Add { by }, Output::Added(sum))),
        read.prop_map(|v| (Op::Get, Output::Get(v.map(|v| v.to_string().into_bytes())))),
    ];
    one_key_history("n", op, 0.25)
}

/// A small one-key history with arbitrary outputs: linearizable or not.
fn arbitrary_history() -> impl Strategy<Value = Vec<Entry>> {
    let value = prop::option::of(prop::sample::select(vec!["a", "b"]));
    let op = prop_oneof![
        prop::sample::select(vec!["a", "b"])
            .prop_map(|v| (Op::Put { value: v.into() }, Output::Put)),
        value.prop_map(|v| (Op::Get, Output::Get(v.map(Into::into)))),
        any::<bool>().prop_map(|existed| (Op::Delete, Output::Delete { existed })),
    ];
    one_key_history("k", op, 0.2)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
    ))]

    // Every recorded execution of the model is linearizable; a read of a
    // value never written makes it not, on that read's key alone.
    #[test]
    fn executions_pass_and_a_forged_read_fails(
        plan in prop::collection::vec(planned(3, 4, 4 * STRIDE_TICKS), 1..60),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut history = history(&plan);
        let report = checked(&history);
        prop_assert!(report.is_linearizable(), "{}", report);

        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].completion, Completion::Returned { output: Output::Get(_), .. }))
            .collect();
        prop_assume!(!reads.is_empty());
        let forged = reads[pick.index(reads.len())];
        let Completion::Returned { output, .. } = &mut history[forged].completion else {
            unreachable!("picked among returned reads");
        };
        *output = Output::Get(Some(b"never written".to_vec()));
        let report = checked(&history);
        prop_assert_eq!(report.verdict(), Verdict::NotLinearizable, "{}", report);
        let keys: Vec<&str> = report.violations().map(|violation| violation.key.as_str()).collect();
        prop_assert_eq!(keys, [history[forged].key.as_str()]);
    }

    // On small histories with arbitrary outputs, the checker agrees with
    // trying every order.
    #[test]
    fn agrees_with_brute_force(history in arbitrary_history()) {
        let expected = linearizable_by_brute_force(&history);
        let report = checked(&history);
        prop_assert_eq!(report.is_linearizable(), expected, "{}", report);
        prop_assert_eq!(report.unknown_keys(), 0);
    }

    // The same for counters: adds and reads, unknown adds dropped or not.
    #[test]
    fn counters_agree_with_brute_force(history in arbitrary_counter_history()) {
        let expected = counter_linearizable_by_brute_force(&history);
        let report = checked(&history);
        prop_assert_eq!(report.is_linearizable(), expected, "{}", report);
        prop_assert_eq!(report.unknown_keys(), 0);
    }
}

// 2,000 operations over 20 keys, each overlapping about 100 others (five on
// its own key), with some unknown outcomes: the checker must finish. The time
// is printed (`--nocapture`), never asserted.
#[test]
fn large_history_checks() {
    let mut runner = TestRunner::deterministic();
    let plan = prop::collection::vec(planned(20, 200, 50 * STRIDE_TICKS), 2000)
        .new_tree(&mut runner)
        .expect("a plan")
        .current();
    let history = history(&plan);
    let started = Instant::now();
    let report = checked(&history);
    let elapsed = started.elapsed();
    assert!(report.is_linearizable(), "{report}");
    let steps: u64 = report.keys.iter().map(|key| key.steps).sum();
    eprintln!("checked {} operations, {steps} steps, in {elapsed:?}", history.len());
}

fn add(key: &str, by: i64, ticks: Range<Tick>, sum: i64) -> Entry {
    returned(key, Op::Add { by }, ticks, Output::Added(sum))
}

// Counters: adds return their sum, so an add applied twice (a retry that
// took effect again) or lost shows in the sums and the reads.
#[test]
fn concurrent_adds_linearize_in_the_order_their_sums_tell() {
    assert_linearizable(&[
        add("c", 1, 0..10, 2),
        add("c", 1, 1..9, 1),
        get("c", Some("2"), 11..12),
        add("c", -5, 13..14, -3),
        get("c", Some("-3"), 15..16),
    ]);
}

#[test]
fn an_add_applied_twice_is_caught() {
    // One client's add of 1, retried and applied again: the sums 1 then 2
    // cannot both come from one add, and a later read sees 2.
    assert_violation_on(&[add("c", 1, 0..2, 1), get("c", Some("2"), 3..4)], "c");
    assert_violation_on(&[add("c", 2, 0..2, 2), add("c", 1, 3..4, 4)], "c");
}

#[test]
fn an_add_of_unknown_outcome_may_have_applied_or_not() {
    assert_linearizable(&[unknown("c", Op::Add { by: 5 }, 0), get("c", Some("5"), 3..4)]);
    assert_linearizable(&[unknown("c", Op::Add { by: 5 }, 0), get("c", None, 3..4)]);
    // ... but only once.
    let history =
        [unknown("c", Op::Add { by: 5 }, 0), get("c", Some("5"), 3..4), get("c", Some("10"), 5..6)];
    assert_violation_on(&history, "c");
    // A read of something no add makes.
    assert_violation_on(&[add("c", 1, 0..1, 1), get("c", Some("x"), 2..3)], "c");
}

#[test]
fn a_counter_key_takes_adds_and_gets_only() {
    let history = [add("c", 1, 0..1, 1), put("c", "7", 2..3)];
    assert!(matches!(check(&history), Err(HistoryError::NotACounterOp { index: 1, .. })));
}
