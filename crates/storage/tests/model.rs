//! Differential property test: the RocksDB state machine against a model made of
//! ordered maps, over random commands, random retries, random batch boundaries
//! and restarts. Every outcome and the final state must agree. This is what
//! proves that batching never changes an answer (entries later in a batch see
//! earlier ones) and that dedup holds across restarts.
//!
//! On failure proptest prints the minimal failing case; set
//! `PROPTEST_CASES=N` for a longer run.

use std::collections::BTreeMap;

use cairn_storage::{
    ApplyError, Command, CommandId, Conflict, Doc, Op, Outcome, StateMachine, Store,
    CLUSTER_VERSION_KEY,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const TABLES: [&str; 2] = ["t1", "t2"];
const IDS: [&str; 3] = ["a", "b", "c"];
const KEYS: [&str; 2] = ["k1", "k2"];

#[derive(Clone, Debug)]
enum Step {
    /// A fresh command in the session.
    Run(Op),
    /// The previous command again, with the same id (a retry).
    Retry,
    /// Cut the batch here.
    Cut,
    /// Close and reopen the store here (cuts the batch too).
    Restart,
}

fn doc(id: &str, n: i64) -> Doc {
    Doc { id: id.into(), json: json!({"id": id, "n": n}).to_string() }
}

fn op() -> impl Strategy<Value = Op> {
    let table = prop::sample::select(TABLES.to_vec()).prop_map(String::from);
    let id = prop::sample::select(IDS.to_vec()).prop_map(String::from);
    let key = prop::sample::select(KEYS.to_vec()).prop_map(String::from);
    let conflict = prop::sample::select(vec![Conflict::Error, Conflict::Replace, Conflict::Update]);
    prop_oneof![
        table.clone().prop_map(|table| Op::CreateTable { table }),
        table.clone().prop_map(|table| Op::DropTable { table }),
        (table.clone(), prop::collection::vec((id.clone(), 0..5i64), 1..3), conflict).prop_map(
            |(table, docs, conflict)| Op::Insert {
                table,
                docs: docs.iter().map(|(id, n)| doc(id, *n)).collect(),
                conflict
            }
        ),
        (table.clone(), id.clone(), 0..5i64)
            .prop_map(|(table, id, n)| Op::Replace { doc: doc(&id, n), table }),
        (table.clone(), id.clone(), 0..5i64, any::<bool>()).prop_map(|(table, id, n, remove)| {
            let patch = if remove { json!({"n": null}) } else { json!({"m": n}) };
            Op::Update { table, id, patch: patch.to_string() }
        }),
        (table, id).prop_map(|(table, id)| Op::Delete { table, id }),
        (key.clone(), prop::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(key, value)| Op::KvPut { key, value }),
        key.clone().prop_map(|key| Op::KvDelete { key }),
        (key.clone(), 0..3u8).prop_map(|(key, n)| Op::SystemPut {
            key,
            json: format!("{{\"n\":{n}}}"),
            expect_revision: None
        }),
        (key.clone(), -3..4i64).prop_map(|(key, by)| Op::KvIncrement { key, by }),
        (key, Just(i64::MAX)).prop_map(|(key, by)| Op::KvIncrement { key, by }),
        // Finalizing to each version, and a record that is not one.
        prop::sample::select(vec![r#"{"version":"0.1"}"#, r#"{"version":"0.2"}"#, r#"{"v":1}"#])
            .prop_map(|json| Op::SystemPut {
                key: CLUSTER_VERSION_KEY.into(),
                json: json.into(),
                expect_revision: None
            }),
        Just(Op::Noop),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => op().prop_map(Step::Run),
        2 => Just(Step::Retry),
        2 => Just(Step::Cut),
        1 => Just(Step::Restart),
    ]
}

/// The model: what each command should answer, from plain maps.
#[derive(Default)]
struct Model {
    tables: BTreeMap<String, BTreeMap<String, Value>>,
    kv: BTreeMap<String, Vec<u8>>,
    system: BTreeMap<String, Value>,
    /// The cluster version, as (major, minor): (0, 1) without a record.
    cluster_version: (u64, u64),
}

impl Model {
    fn apply(&mut self, op: &Op) -> Outcome {
        match self.try_apply(op) {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed(error),
        }
    }

    fn table(&mut self, table: &str) -> Result<&mut BTreeMap<String, Value>, ApplyError> {
        self.tables.get_mut(table).ok_or_else(|| ApplyError::TableNotFound { table: table.into() })
    }

    fn try_apply(&mut self, op: &Op) -> Result<Outcome, ApplyError> {
        let invalid = || ApplyError::Invalid { message: String::new() };
        Ok(match op {
            Op::Noop | Op::Barrier { .. } => Outcome::Done,
            Op::SystemPut { key, json, .. } if key == CLUSTER_VERSION_KEY => {
                let value: Value = serde_json::from_str(json).unwrap();
                let version = match value["version"].as_str() {
                    Some("0.1") => (0, 1),
                    Some("0.2") => (0, 2),
                    _ => return Err(invalid()),
                };
                if version < self.cluster_version {
                    return Err(invalid());
                }
                self.cluster_version = version;
                let created = self.system.insert(key.clone(), value).is_none();
                Outcome::Replaced { created }
            }
            Op::KvIncrement { key, by } => {
                if self.cluster_version < (0, 2) {
                    return Err(invalid());
                }
                let current = match self.kv.get(key) {
                    None => 0,
                    Some(bytes) => {
                        let text = std::str::from_utf8(bytes).map_err(|_| invalid())?;
                        let digits = text.strip_prefix('-').unwrap_or(text);
                        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                            return Err(invalid());
                        }
                        text.parse::<i64>().map_err(|_| invalid())?
                    }
                };
                let value = current.checked_add(*by).ok_or_else(invalid)?;
                self.kv.insert(key.clone(), value.to_string().into_bytes());
                Outcome::Counted { value }
            }
            Op::OpenSession { .. } => unreachable!("the test opens its session first"),
            Op::SystemPut { key, json, .. } => {
                let value = serde_json::from_str(json).unwrap();
                Outcome::Replaced { created: self.system.insert(key.clone(), value).is_none() }
            }
            Op::CreateTable { table } => {
                let created = !self.tables.contains_key(table);
                self.tables.entry(table.clone()).or_default();
                Outcome::TableCreated { created }
            }
            Op::DropTable { table } => {
                self.table(table)?;
                self.tables.remove(table);
                Outcome::TableDropped
            }
            Op::Insert { table, docs, conflict } => {
                let rows = self.table(table)?;
                let mut ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
                ids.sort();
                if ids.windows(2).any(|w| w[0] == w[1]) {
                    return Err(ApplyError::Invalid { message: String::new() });
                }
                let clashes: Vec<String> = docs
                    .iter()
                    .filter(|d| rows.contains_key(&d.id))
                    .map(|d| d.id.clone())
                    .collect();
                if *conflict == Conflict::Error && !clashes.is_empty() {
                    return Err(ApplyError::Conflict { table: table.clone(), ids: clashes });
                }
                let (mut inserted, mut replaced, mut updated) = (0, 0, 0);
                for d in docs {
                    let new: Value = serde_json::from_str(&d.json).unwrap();
                    match (rows.get_mut(&d.id), conflict) {
                        (None, _) => {
                            inserted += 1;
                            rows.insert(d.id.clone(), new);
                        }
                        (Some(old), Conflict::Update) => {
                            updated += 1;
                            json_patch::merge(old, &new);
                        }
                        (Some(old), _) => {
                            replaced += 1;
                            *old = new;
                        }
                    }
                }
                let ids = docs.iter().map(|d| d.id.clone()).collect();
                Outcome::Inserted { inserted, replaced, updated, ids }
            }
            Op::Replace { table, doc } => {
                let rows = self.table(table)?;
                let new = serde_json::from_str(&doc.json).unwrap();
                let created = rows.insert(doc.id.clone(), new).is_none();
                Outcome::Replaced { created }
            }
            Op::Update { table, id, patch } => {
                let rows = self.table(table)?;
                let old = rows.get_mut(id).ok_or_else(|| ApplyError::DocNotFound {
                    table: table.clone(),
                    id: id.clone(),
                })?;
                json_patch::merge(old, &serde_json::from_str(patch).unwrap());
                Outcome::Updated { json: old.to_string() }
            }
            Op::Delete { table, id } => {
                let existed = self.table(table)?.remove(id).is_some();
                Outcome::Deleted { existed }
            }
            Op::KvPut { key, value } => {
                self.kv.insert(key.clone(), value.clone());
                Outcome::KvWritten
            }
            Op::KvDelete { key } => Outcome::Deleted { existed: self.kv.remove(key).is_some() },
        })
    }
}

/// Messages of `Invalid` refusals are prose; compare their kind only.
fn normalize(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Failed(ApplyError::Invalid { .. }) => {
            Outcome::Failed(ApplyError::Invalid { message: String::new() })
        }
        Outcome::Updated { json } => {
            Outcome::Updated { json: serde_json::from_str::<Value>(&json).unwrap().to_string() }
        }
        other => other,
    }
}

fn check(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(Store::open(dir.path()).unwrap()).unwrap();
    let opened = sm.apply(&[(1, Command::new(None, Op::OpenSession { token: 1 }))]).unwrap();
    let Outcome::SessionOpened { session } = opened[0].outcome else {
        return Err(TestCaseError::fail("no session"));
    };
    let mut model = Model::default();
    // Every command in the pending batch, with the answer the model expects.
    let mut pending: Vec<(Command, Outcome)> = Vec::new();
    let mut last: Option<(Command, Outcome)> = None;
    let mut seq = 0;
    let flush = |sm: &mut StateMachine,
                 pending: &mut Vec<(Command, Outcome)>|
     -> Result<(), TestCaseError> {
        let first = sm.applied_index() + 1;
        let entries: Vec<(u64, Command)> =
            (first..).zip(pending.iter().map(|(c, _)| c.clone())).collect();
        let answers = sm.apply(&entries).unwrap();
        for ((command, expected), got) in pending.drain(..).zip(answers) {
            prop_assert_eq!(normalize(got.outcome), expected, "command {:?}", command);
        }
        Ok(())
    };
    for step in steps {
        match step {
            Step::Run(op) => {
                seq += 1;
                let expected = normalize(model.apply(&op));
                let command = Command::new(Some(CommandId { session, seq }), op);
                pending.push((command.clone(), expected.clone()));
                last = Some((command, expected));
            }
            Step::Retry => {
                if let Some(again) = last.clone() {
                    pending.push(again);
                }
            }
            Step::Cut => flush(&mut sm, &mut pending)?,
            Step::Restart => {
                flush(&mut sm, &mut pending)?;
                drop(sm);
                sm = StateMachine::open(Store::open(dir.path()).unwrap()).unwrap();
            }
        }
    }
    flush(&mut sm, &mut pending)?;

    let store = sm.store();
    let tables: Vec<String> = model.tables.keys().cloned().collect();
    prop_assert_eq!(store.list_tables().unwrap(), tables);
    for (table, rows) in &model.tables {
        let page = store.list_docs(table, None, 100).unwrap();
        let got: Vec<Value> = page.docs.iter().map(|j| serde_json::from_str(j).unwrap()).collect();
        let want: Vec<Value> = rows.values().cloned().collect();
        prop_assert_eq!(got, want, "table {}", table);
    }
    for key in KEYS {
        prop_assert_eq!(store.kv_get(key).unwrap(), model.kv.get(key).cloned(), "key {}", key);
        // The machine adds the revision (an index the model does not keep).
        let system = store.get_system(key).unwrap().map(|j| {
            let mut value = serde_json::from_str::<Value>(&j).unwrap();
            value.as_object_mut().unwrap().remove("revision");
            value
        });
        prop_assert_eq!(system, model.system.get(key).cloned(), "system record {}", key);
    }
    let (major, minor) = model.cluster_version.max((0, 1));
    prop_assert_eq!(store.cluster_version().unwrap().to_string(), format!("{major}.{minor}"));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(200)
    ))]

    #[test]
    fn state_machine_agrees_with_the_model(steps in prop::collection::vec(step(), 1..60)) {
        check(steps)?;
    }
}
