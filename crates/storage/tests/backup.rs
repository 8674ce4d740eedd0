//! Backups of a store into a directory sink, and restores from them. Each
//! test says what it proves. Restored stores are compared with their source
//! by the state fingerprint and by reading documents back.

use std::path::Path;

use cairn_storage::backup::{self, BackupSink, DirSink, FILES_DIR, MANIFEST_FILE};
use cairn_storage::log_store::LogStore;
use cairn_storage::{Command, Conflict, Doc, Error, Op, StateMachine, Store};
use omnipaxos::storage::Storage;
use tempfile::TempDir;

struct Node {
    dir: TempDir,
    sm: StateMachine,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(Store::open(&dir.path().join("db")).unwrap()).unwrap();
        Node { dir, sm }
    }

    fn run(&mut self, op: Op) {
        let index = self.sm.applied_index() + 1;
        self.sm.apply(&[(index, Command::new(None, op))]).unwrap();
    }

    fn insert(&mut self, table: &str, from: u32, count: u32) {
        let docs = (from..from + count)
            .map(|n| Doc { id: format!("d{n:05}"), json: format!(r#"{{"id":"d{n:05}","n":{n}}}"#) })
            .collect();
        self.run(Op::Insert { table: table.into(), docs, conflict: Conflict::Error });
    }

    fn store(&self) -> &Store {
        self.sm.store()
    }

    /// A scratch parent beside the store, on its file system.
    fn scratch(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn take(&self, sink: &DirSink, name: &str) -> backup::Manifest {
        backup::take(self.store(), &self.scratch("scratch"), sink, name).unwrap()
    }
}

/// Whether `dir` holds nothing (or is missing).
fn empty(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
}

fn populated() -> Node {
    let mut node = Node::new();
    node.run(Op::CreateTable { table: "users".into() });
    node.insert("users", 0, 500);
    node.run(Op::KvPut { key: "k".into(), value: b"v".to_vec() });
    node
}

fn reason(error: Error) -> String {
    match error {
        Error::Backup { reason } => reason,
        other => panic!("expected a backup error, got {other:?}"),
    }
}

/// A backup restores into a new directory with the same state: the same
/// applied index and fingerprint, documents that read back, and a store that
/// goes on applying after the backup's index.
#[test]
fn a_backup_restores_to_the_same_state_and_the_store_carries_on() {
    let mut node = populated();
    let sinks = tempfile::tempdir().unwrap();
    let sink = DirSink::new(&sinks.path().join("sink")).unwrap();
    let manifest = node.take(&sink, "first");
    assert_eq!(manifest.applied_index, node.store().applied_index());
    assert_eq!(manifest.fingerprint, format!("{:016x}", node.store().state_fingerprint().unwrap()));
    assert!(manifest.bytes > 0 && manifest.new_bytes == manifest.bytes, "{manifest:?}");
    assert!(empty(&node.scratch("scratch")), "the scratch checkpoint is removed");

    // Later writes are not in the backup.
    node.insert("users", 500, 10);

    let target = sinks.path().join("restored");
    let restored = backup::restore(&sink, "first", &sinks.path().join("tmp"), &target).unwrap();
    assert_eq!(restored, manifest);
    let store = Store::open(&target).unwrap();
    assert_eq!(store.applied_index(), manifest.applied_index);
    assert_eq!(format!("{:016x}", store.state_fingerprint().unwrap()), manifest.fingerprint);
    assert_eq!(store.count_docs("users").unwrap(), 500);
    assert_eq!(store.kv_get("k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(store.get_doc("users", "d00500").unwrap().is_none());
    let mut sm = StateMachine::open(store).unwrap();
    let next = manifest.applied_index + 1;
    let op = Op::KvPut { key: "after".into(), value: b"1".to_vec() };
    sm.apply(&[(next, Command::new(None, op))]).unwrap();
    assert_eq!(sm.applied_index(), next);
}

/// A second backup after a few writes shares the files compaction left alone,
/// and deleting the first keeps every file the second lists (and restores).
#[test]
fn successive_backups_share_files_and_delete_collects_only_the_unshared() {
    let mut node = populated();
    let sinks = tempfile::tempdir().unwrap();
    let sink = DirSink::new(sinks.path()).unwrap();
    let first = node.take(&sink, "first");
    node.insert("users", 500, 5);
    let second = node.take(&sink, "second");
    assert!(second.new_bytes < second.bytes, "nothing shared: {second:?}");
    assert!(second.applied_index > first.applied_index);
    let names: Vec<String> = sink.manifests().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["first", "second"]);

    assert!(backup::delete(&sink, "first").unwrap());
    assert!(!backup::delete(&sink, "first").unwrap(), "a second delete finds nothing");
    let listed: std::collections::BTreeSet<String> =
        second.files.iter().map(|f| f.sha256.clone()).collect();
    let held: std::collections::BTreeSet<String> = sink.files().unwrap().into_iter().collect();
    assert_eq!(held, listed, "exactly the second backup's files remain");
    let target = sinks.path().join("restored");
    backup::restore(&sink, "second", &sinks.path().join("tmp"), &target).unwrap();
    assert_eq!(Store::open(&target).unwrap().count_docs("users").unwrap(), 505);
}

/// The consensus log stays out of a backup: a store whose log holds far
/// more than its state backs up to about its state, and still restores.
#[test]
fn a_backup_leaves_the_consensus_log_behind() {
    let node = populated();
    let mut log = LogStore::open(node.store()).unwrap();
    // Values that do not compress: bytes of a xorshift sequence.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let entries: Vec<Command> = (0..256)
        .map(|n| Command::new(None, Op::KvPut { key: format!("log{n}"), value: noise(16 * 1024) }))
        .collect();
    log.append_entries(entries).unwrap();
    let sinks = tempfile::tempdir().unwrap();
    let sink = DirSink::new(sinks.path()).unwrap();
    let manifest = node.take(&sink, "small");
    // 4 MiB of log, and a state of 500 small documents.
    assert!(manifest.bytes < 1024 * 1024, "the log went into the backup: {manifest:?}");
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert!(!listed.iter().any(|n| *n == "LOCK" || n.starts_with("LOG")), "{listed:?}");
    assert!(empty(&node.scratch("scratch")), "the scratch checkpoint is removed");
    // The store's own log is whole.
    assert_eq!(log.get_log_len().unwrap(), 256);
    drop(log);
    let target = sinks.path().join("restored");
    backup::restore(&sink, "small", &sinks.path().join("tmp"), &target).unwrap();
    let store = Store::open(&target).unwrap();
    assert_eq!(format!("{:016x}", store.state_fingerprint().unwrap()), manifest.fingerprint);
    assert_eq!(store.count_docs("users").unwrap(), 500);
}

/// One flipped byte in any file of a backup refuses the restore, naming the
/// file, and nothing is left in the target.
#[test]
fn a_flipped_byte_refuses_the_restore_naming_the_file() {
    let node = populated();
    let sinks = tempfile::tempdir().unwrap();
    let sink = DirSink::new(sinks.path()).unwrap();
    let manifest = node.take(&sink, "b1");
    let largest = manifest.files.iter().max_by_key(|f| f.bytes).unwrap();
    let path = sinks.path().join(FILES_DIR).join(&largest.sha256);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let target = sinks.path().join("restored");
    let scratch = sinks.path().join("tmp");
    let refused = reason(backup::restore(&sink, "b1", &scratch, &target).unwrap_err());
    assert!(refused.contains(&largest.name) && refused.contains("corrupt"), "{refused}");
    assert!(!target.exists(), "nothing is written to the target");
    assert!(empty(&scratch), "the scratch directory is removed");
    let verified = reason(backup::verify(&sink, "b1", &scratch).unwrap_err());
    assert!(verified.contains(&largest.name), "{verified}");
}

/// A manifest whose fingerprint was altered is refused before the target is
/// written: the files are whole, but they do not hold what it claims.
#[test]
fn a_manifest_that_does_not_match_its_state_is_refused() {
    let node = populated();
    let sinks = tempfile::tempdir().unwrap();
    let sink = DirSink::new(sinks.path()).unwrap();
    let mut manifest = node.take(&sink, "b1");
    manifest.fingerprint = "0000000000000001".into();
    sink.put_manifest(&manifest).unwrap();
    let target = sinks.path().join("restored");
    let refused =
        reason(backup::restore(&sink, "b1", &sinks.path().join("tmp"), &target).unwrap_err());
    assert!(refused.contains("fingerprint"), "{refused}");
    assert!(!target.exists());
}

/// Names are plain path components; a taken name, an unknown backup and a
/// target that holds data are each refused with a message that says so.
#[test]
fn bad_names_and_targets_are_refused() {
    let node = populated();
    let sinks = tempfile::tempdir().unwrap();
    let sink = DirSink::new(sinks.path()).unwrap();
    for bad in ["", "..", "a/b", "Upper", "files", &"x".repeat(64)] {
        let error = reason(backup::take(node.store(), &node.scratch("s"), &sink, bad).unwrap_err());
        assert!(error.contains("name") || error.contains("reserved"), "{bad:?}: {error}");
    }
    node.take(&sink, "b1");
    let again = reason(backup::take(node.store(), &node.scratch("s"), &sink, "b1").unwrap_err());
    assert!(again.contains("already holds"), "{again}");
    let missing = reason(
        backup::restore(&sink, "nope", &sinks.path().join("t"), &sinks.path().join("r"))
            .unwrap_err(),
    );
    assert!(missing.contains("no backup named"), "{missing}");
    let full = sinks.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"data").unwrap();
    let not_empty =
        reason(backup::restore(&sink, "b1", &sinks.path().join("t"), &full).unwrap_err());
    assert!(not_empty.contains("not empty"), "{not_empty}");
    assert!(full.join("x").exists(), "a refused restore leaves the directory alone");
}

/// A manifest that names a file outside the sink's files (`../x`) or of
/// another format is refused when read, naming the manifest.
#[test]
fn a_manifest_with_a_path_or_an_unknown_format_is_refused() {
    let node = populated();
    let sinks = tempfile::tempdir().unwrap();
    let sink = DirSink::new(sinks.path()).unwrap();
    let manifest = node.take(&sink, "b1");
    let path = sinks.path().join("b1").join(MANIFEST_FILE);
    let mut escaping = manifest.clone();
    escaping.files[0].name = "../escape".into();
    write_json(&path, &escaping);
    let error = reason(sink.manifest("b1").unwrap_err());
    assert!(error.contains("plain file name") && error.contains("manifest.json"), "{error}");
    let mut newer = manifest;
    newer.format = 99;
    write_json(&path, &newer);
    let error = reason(sink.manifest("b1").unwrap_err());
    assert!(error.contains("format 99"), "{error}");
}

fn write_json(path: &Path, manifest: &backup::Manifest) {
    std::fs::write(path, serde_json::to_vec(manifest).unwrap()).unwrap();
}

/// A sink that fails every `put_file` from the `fail_at`-th on, as a full
/// disk or a crash mid-backup would: the files put before stay.
struct Failing {
    inner: DirSink,
    puts: std::sync::atomic::AtomicUsize,
    fail_at: usize,
}

impl BackupSink for Failing {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn lock(&self) -> Result<Box<dyn Send>, Error> {
        self.inner.lock()
    }
    fn has_file(&self, sha256: &str) -> Result<bool, Error> {
        self.inner.has_file(sha256)
    }
    fn put_file(&self, sha256: &str, from: &Path) -> Result<(), Error> {
        if self.puts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= self.fail_at {
            return Err(Error::Backup { reason: "injected: the disk is full".into() });
        }
        self.inner.put_file(sha256, from)
    }
    fn get_file(&self, sha256: &str, to: &Path) -> Result<String, Error> {
        self.inner.get_file(sha256, to)
    }
    fn files(&self) -> Result<Vec<String>, Error> {
        self.inner.files()
    }
    fn delete_file(&self, sha256: &str) -> Result<(), Error> {
        self.inner.delete_file(sha256)
    }
    fn put_manifest(&self, manifest: &backup::Manifest) -> Result<(), Error> {
        self.inner.put_manifest(manifest)
    }
    fn manifest(&self, name: &str) -> Result<Option<backup::Manifest>, Error> {
        self.inner.manifest(name)
    }
    fn manifests(&self) -> Result<Vec<backup::Manifest>, Error> {
        self.inner.manifests()
    }
    fn delete_manifest(&self, name: &str) -> Result<bool, Error> {
        self.inner.delete_manifest(name)
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// Insert this many documents.
    Write(u32),
    /// Take backup `b<n>`, its file writes failing from the k-th on (when
    /// given).
    Take(u8, Option<usize>),
    /// Delete backup `b<n>`.
    Delete(u8),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (1u32..200).prop_map(Step::Write),
        (0u8..4, proptest::option::weighted(0.3, 0usize..6)).prop_map(|(n, f)| Step::Take(n, f)),
        (0u8..4).prop_map(Step::Delete),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Whatever the order of writes, backups (some failing midway) and
    /// deletions, every backup that was taken and not deleted verifies
    /// (every file there, whole, holding the state its manifest names), a
    /// failed one leaves no manifest, and the sink holds no file that no
    /// backup lists once a deletion has collected.
    #[test]
    fn every_kept_backup_stays_whole(steps in proptest::collection::vec(step(), 1..12)) {
        let mut node = Node::new();
        node.run(Op::CreateTable { table: "t".into() });
        let sinks = tempfile::tempdir().unwrap();
        let dir = DirSink::new(sinks.path()).unwrap();
        let mut kept = std::collections::BTreeMap::new();
        let mut next = 0u32;
        for step in steps {
            match step {
                Step::Write(count) => {
                    node.insert("t", next, count);
                    next += count;
                }
                Step::Take(n, fail_at) => {
                    let name = format!("b{n}");
                    let sink = Failing {
                        inner: dir.clone(),
                        puts: Default::default(),
                        fail_at: fail_at.unwrap_or(usize::MAX),
                    };
                    let scratch = node.scratch("scratch");
                    match backup::take(node.store(), &scratch, &sink, &name) {
                        Ok(manifest) => {
                            proptest::prop_assert!(!kept.contains_key(&name));
                            kept.insert(name, manifest);
                        }
                        Err(Error::Backup { reason }) => {
                            let failed = reason.contains("injected");
                            proptest::prop_assert!(failed || kept.contains_key(&name), "{}", reason);
                            if failed {
                                proptest::prop_assert!(dir.manifest(&name).unwrap().is_none());
                            }
                        }
                        Err(other) => proptest::prop_assert!(false, "{other:?}"),
                    }
                    proptest::prop_assert!(empty(&scratch));
                }
                Step::Delete(n) => {
                    let name = format!("b{n}");
                    let existed = backup::delete(&dir, &name).unwrap();
                    proptest::prop_assert_eq!(existed, kept.remove(&name).is_some());
                    let listed: std::collections::BTreeSet<String> = kept
                        .values()
                        .flat_map(|m| m.files.iter().map(|f| f.sha256.clone()))
                        .collect();
                    let held: std::collections::BTreeSet<String> =
                        dir.files().unwrap().into_iter().collect();
                    proptest::prop_assert_eq!(held, listed);
                }
            }
            for (name, manifest) in &kept {
                let scratch = sinks.path().join("verify");
                let verified = backup::verify(&dir, name, &scratch).unwrap();
                proptest::prop_assert_eq!(&verified, manifest);
            }
        }
    }
}
