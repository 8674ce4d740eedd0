//! Backups: a store's state machine as of one applied index, kept in a sink
//! as content-addressed files with a manifest, and restored into a new data
//! directory.
//!
//! Taking ([`take`]): a RocksDB checkpoint of the store (hard links to its SST
//! files, at one sequence number), with the consensus log's column family
//! emptied (a restore never reads it), is opened read-only for its applied
//! index and state fingerprint. Every file of the checkpoint is hashed (SHA-256) and
//! copied into the sink under its hash, unless the sink already holds that
//! hash: SST files never change once written, so successive backups share
//! every file that compaction left alone (incremental). The manifest, written
//! last and atomically, lists each file's name, size and hash: a backup
//! exists once its manifest does, and a crash before leaves only unreferenced
//! files, which the next [`delete`] collects. Every replica reaches the same
//! state at the same index (the state machine is deterministic), so a backup
//! taken on any of them at index N holds the same state, and its fingerprint
//! says so.
//!
//! Restoring ([`restore`]): every file is copied out of the sink into a
//! scratch directory and its hash checked; a mismatch refuses the restore,
//! naming the file, before anything is written to the target. The scratch
//! checkpoint is opened read-only and its fingerprint compared with the
//! manifest's; then its state-machine column families are streamed into a
//! fresh store through the snapshot install ([`crate::snapshot`]), the same
//! path a lagging replica catches up by, and the new store's fingerprint is
//! checked once more. The consensus log is never restored: the target is a
//! single node's data directory at the backup's index, which runs alone and
//! grows into a cluster by adding members.
//!
//! Sinks ([`BackupSink`]): a trait over named manifests and hash-named files,
//! so that an object store can be added beside the directory sink
//! ([`DirSink`]). A directory sink's layout:
//! - `<root>/<name>/manifest.json` for each backup;
//! - `<root>/files/<sha256>` for each file, shared among backups;
//! - `<root>/.lock`, held (`flock`) while a backup is taken or deleted, so
//!   that a deletion's collection never removes a file that a backup being
//!   taken has just found present.
//!
//! Not here: choosing the node a backup is taken from, waiting until it has
//! applied what was acknowledged before the request (the server does both),
//! and schedules.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{Options, DB};
use serde::{Deserialize, Serialize};

use crate::engine::{
    fingerprint_of, u64_from, Store, CF_LOG, CF_META, COLUMN_FAMILIES, META_APPLIED_INDEX,
};
use crate::snapshot::{SnapshotSink, SnapshotSource, CHUNK_PAYLOAD_BYTES_DEFAULT};
use crate::Error;

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;
/// A backup's manifest, in its directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The directory of a directory sink that holds the files, by hash.
pub const FILES_DIR: &str = "files";
/// Longest backup name, in characters.
pub const NAME_CHARS_MAX: usize = 63;
/// Most bytes of a manifest read from a sink.
const MANIFEST_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Most files one backup lists.
const FILES_MAX: usize = 100_000;

/// What a backup holds and how it was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`] when written.
    pub format: u32,
    pub name: String,
    /// The index of the last log entry applied to the state it holds.
    pub applied_index: u64,
    /// [`Store::state_fingerprint`] of that state, as 16 hex digits.
    pub fingerprint: String,
    /// The version of Cairn that took it.
    pub cairn_version: String,
    /// When it was taken (Unix milliseconds) and how long that took.
    pub created_ms: u64,
    pub duration_ms: u64,
    /// The size of every file it lists, and of those it added to the sink
    /// (the rest were shared with earlier backups).
    pub bytes: u64,
    pub new_bytes: u64,
    pub files: Vec<BackupFile>,
}

/// One file of a backup's checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Its name in the checkpoint (`000012.sst`, `MANIFEST-000005`, …).
    pub name: String,
    pub bytes: u64,
    /// SHA-256 of its contents, lowercase hex: its name in the sink.
    pub sha256: String,
}

/// Where backups are kept: manifests by backup name, files by hash.
pub trait BackupSink: Send + Sync {
    /// Where the sink is, for messages.
    fn describe(&self) -> String;
    /// Holds the sink for one taking or deletion at a time; released when the
    /// guard drops.
    fn lock(&self) -> Result<Box<dyn Send>, Error>;
    /// Whether the file with this hash is in the sink.
    fn has_file(&self, sha256: &str) -> Result<bool, Error>;
    /// Copies `from` into the sink as the file with this hash, durably and
    /// atomically (a crash leaves it whole or absent).
    fn put_file(&self, sha256: &str, from: &Path) -> Result<(), Error>;
    /// Copies the file with this hash to `to`, a path that does not exist,
    /// returning the SHA-256 of what was copied.
    fn get_file(&self, sha256: &str, to: &Path) -> Result<String, Error>;
    /// The hashes of every file in the sink.
    fn files(&self) -> Result<Vec<String>, Error>;
    fn delete_file(&self, sha256: &str) -> Result<(), Error>;
    /// Writes a manifest, durably and atomically.
    fn put_manifest(&self, manifest: &Manifest) -> Result<(), Error>;
    fn manifest(&self, name: &str) -> Result<Option<Manifest>, Error>;
    /// Every backup's manifest, by name.
    fn manifests(&self) -> Result<Vec<Manifest>, Error>;
    /// Removes a backup's manifest; whether there was one.
    fn delete_manifest(&self, name: &str) -> Result<bool, Error>;
}

fn refused(reason: impl Into<String>) -> Error {
    Error::Backup { reason: reason.into() }
}

/// Checks a backup name: 1 to [`NAME_CHARS_MAX`] characters of `a-z 0-9 - _`,
/// not [`FILES_DIR`]. So a name is always one plain path component.
pub fn check_name(name: &str) -> Result<(), Error> {
    if !plain_name(name) {
        return Err(refused(format!(
            "a backup name is 1 to {NAME_CHARS_MAX} characters of a-z 0-9 - _, not {name:?}"
        )));
    }
    if name == FILES_DIR {
        return Err(refused(format!("'{FILES_DIR}' is reserved; name the backup otherwise")));
    }
    Ok(())
}

/// Whether `name` is 1 to [`NAME_CHARS_MAX`] characters of `a-z 0-9 - _`.
fn plain_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    !name.is_empty() && name.len() <= NAME_CHARS_MAX && name.chars().all(allowed)
}

/// The sink a backup goes to when none is named.
pub const DEFAULT_SINK: &str = "default";

/// Checks a sink's name: one directory under a backup root, named as a
/// backup is (so no `/`, no `..`: a sink is always inside its root).
pub fn check_sink(sink: &str) -> Result<(), Error> {
    if !plain_name(sink) {
        return Err(refused(format!(
            "a sink is the name of a directory under the backup root: 1 to {NAME_CHARS_MAX} \
             characters of a-z 0-9 - _ (no paths), not {sink:?}"
        )));
    }
    Ok(())
}

/// The directory of `sink` under `root`, the sink's name checked first.
pub fn sink_dir(root: &Path, sink: &str) -> Result<PathBuf, Error> {
    check_sink(sink)?;
    Ok(root.join(sink))
}

/// The sinks under `root` that hold anything, by name.
pub fn sinks(root: &Path) -> Result<Vec<String>, Error> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list", root)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("list", root))?;
        if let Some(name) = entry.file_name().to_str() {
            if check_sink(name).is_ok() && entry.path().is_dir() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn check_hash(sha256: &str) -> Result<(), Error> {
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if sha256.len() != 64 || !sha256.chars().all(hex) {
        return Err(refused(format!("{sha256:?} is not a SHA-256 in lowercase hex")));
    }
    Ok(())
}

fn io_error(what: &str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let (what, path) = (what.to_string(), path.display().to_string());
    move |e| refused(format!("cannot {what} {path}: {e}"))
}

/// Reads `path` through, handing each block to `each`; returns the SHA-256
/// of what was read and its size.
fn read_hashing(
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(String, u64), Error> {
    let mut reader = BufReader::new(File::open(path).map_err(io_error("read", path))?);
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    loop {
        let read = reader.read(&mut buffer).map_err(io_error("read", path))?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
        each(&buffer[..read])?;
        bytes += read as u64;
    }
    Ok((cairn_util::secret::hex(context.finish().as_ref()), bytes))
}

/// Copies `from` to `to` (a new file, synced) while hashing; returns the
/// SHA-256 and the size.
fn copy_hashing(from: &Path, to: &Path) -> Result<(String, u64), Error> {
    let file =
        File::options().write(true).create_new(true).open(to).map_err(io_error("create", to))?;
    let mut writer = BufWriter::new(file);
    let read = read_hashing(from, |block| writer.write_all(block).map_err(io_error("write", to)))?;
    let file = writer.into_inner().map_err(|e| io_error("write", to)(e.into_error()))?;
    file.sync_all().map_err(io_error("sync", to))?;
    Ok(read)
}

/// The SHA-256 of a file, and its size.
fn hash_file(path: &Path) -> Result<(String, u64), Error> {
    read_hashing(path, |_| Ok(()))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("sync", dir))
}

/// A sink that is a directory on a file system this process can write.
#[derive(Clone, Debug)]
pub struct DirSink {
    root: PathBuf,
}

impl DirSink {
    /// The sink at `root`, made (with its parents) if absent.
    pub fn new(root: &Path) -> Result<DirSink, Error> {
        fs::create_dir_all(root.join(FILES_DIR)).map_err(io_error("create", root))?;
        Ok(DirSink { root: root.to_path_buf() })
    }

    /// The sink at `root`, which must exist (for reading backups).
    pub fn existing(root: &Path) -> Result<DirSink, Error> {
        if !root.is_dir() {
            return Err(refused(format!("{} is not a directory of backups", root.display())));
        }
        Ok(DirSink { root: root.to_path_buf() })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file_path(&self, sha256: &str) -> Result<PathBuf, Error> {
        check_hash(sha256)?;
        Ok(self.root.join(FILES_DIR).join(sha256))
    }
}

impl BackupSink for DirSink {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn lock(&self) -> Result<Box<dyn Send>, Error> {
        let path = self.root.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        file.lock().map_err(io_error("lock", &path))?;
        Ok(Box::new(file))
    }

    fn has_file(&self, sha256: &str) -> Result<bool, Error> {
        let path = self.file_path(sha256)?;
        path.try_exists().map_err(io_error("look for", &path))
    }

    fn put_file(&self, sha256: &str, from: &Path) -> Result<(), Error> {
        let path = self.file_path(sha256)?;
        let partial = path.with_extension("partial");
        // A crash may have left a partial copy: it is never read.
        let _ = fs::remove_file(&partial);
        let (copied, _) = copy_hashing(from, &partial)?;
        if copied != sha256 {
            let _ = fs::remove_file(&partial);
            return Err(refused(format!(
                "{} changed while it was copied (SHA-256 {copied}, expected {sha256})",
                from.display()
            )));
        }
        fs::rename(&partial, &path).map_err(io_error("rename", &partial))?;
        sync_dir(&self.root.join(FILES_DIR))
    }

    fn get_file(&self, sha256: &str, to: &Path) -> Result<String, Error> {
        let path = self.file_path(sha256)?;
        Ok(copy_hashing(&path, to)?.0)
    }

    fn files(&self) -> Result<Vec<String>, Error> {
        let dir = self.root.join(FILES_DIR);
        let mut hashes = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(hashes),
            Err(e) => return Err(io_error("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_error("list", &dir))?;
            if let Some(name) = entry.file_name().to_str() {
                if check_hash(name).is_ok() {
                    hashes.push(name.to_string());
                }
            }
        }
        hashes.sort();
        Ok(hashes)
    }

    fn delete_file(&self, sha256: &str) -> Result<(), Error> {
        let path = self.file_path(sha256)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("delete", &path)(e)),
        }
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<(), Error> {
        check_name(&manifest.name)?;
        let dir = self.root.join(&manifest.name);
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let path = dir.join(MANIFEST_FILE);
        let mut text = serde_json::to_vec_pretty(manifest)
            .map_err(|e| refused(format!("cannot encode the manifest: {e}")))?;
        text.push(b'\n');
        cairn_util::files::write_atomic(&path, &text).map_err(io_error("write", &path))?;
        sync_dir(&dir)?;
        sync_dir(&self.root)
    }

    fn manifest(&self, name: &str) -> Result<Option<Manifest>, Error> {
        check_name(name)?;
        let path = self.root.join(name).join(MANIFEST_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        let mut text = Vec::new();
        file.take(MANIFEST_BYTES_MAX + 1)
            .read_to_end(&mut text)
            .map_err(io_error("read", &path))?;
        if text.len() as u64 > MANIFEST_BYTES_MAX {
            return Err(refused(format!(
                "{} is over {MANIFEST_BYTES_MAX} bytes: not a manifest",
                path.display()
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| refused(format!("{} is not a backup manifest: {e}", path.display())))?;
        check_manifest(&manifest, name).map_err(|e| refused(format!("{}: {e}", path.display())))?;
        Ok(Some(manifest))
    }

    fn manifests(&self) -> Result<Vec<Manifest>, Error> {
        let entries = fs::read_dir(&self.root).map_err(io_error("list", &self.root))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("list", &self.root))?;
            if let Some(name) = entry.file_name().to_str() {
                if check_name(name).is_ok() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        let mut manifests = Vec::new();
        for name in names {
            if let Some(manifest) = self.manifest(&name)? {
                manifests.push(manifest);
            }
        }
        Ok(manifests)
    }

    fn delete_manifest(&self, name: &str) -> Result<bool, Error> {
        check_name(name)?;
        let dir = self.root.join(name);
        let path = dir.join(MANIFEST_FILE);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("delete", &path)(e)),
        }
        let _ = fs::remove_dir(&dir);
        sync_dir(&self.root)?;
        Ok(true)
    }
}

/// What a manifest must hold to be read: this format, its own name, files
/// with plain names and well-formed hashes.
fn check_manifest(manifest: &Manifest, name: &str) -> Result<(), String> {
    if manifest.format != FORMAT {
        return Err(format!(
            "format {} is not one this version reads (format {FORMAT})",
            manifest.format
        ));
    }
    if manifest.name != name {
        return Err(format!("it names backup {:?}, not {name:?}", manifest.name));
    }
    if manifest.files.len() > FILES_MAX {
        return Err(format!("it lists {} files, above {FILES_MAX}", manifest.files.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for file in &manifest.files {
        let plain = !file.name.is_empty()
            && file.name.len() <= 255
            && file.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && file.name != "."
            && file.name != "..";
        if !plain {
            return Err(format!("file name {:?} is not a plain file name", file.name));
        }
        if !seen.insert(file.name.as_str()) {
            return Err(format!("file {:?} is listed twice", file.name));
        }
        check_hash(&file.sha256).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A directory removed when dropped (a scratch checkpoint), unless kept.
struct Scratch(PathBuf);

impl Scratch {
    /// A new directory's path in `parent` (made if missing), named for
    /// `what` and unique to this process and moment; the directory itself
    /// is not made.
    fn new_in(parent: &Path, what: &str) -> Result<Scratch, Error> {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = parent.join(format!(".{what}-{}-{nanos}", std::process::id()));
        if path.exists() {
            return Err(refused(format!(
                "the scratch directory {} already exists",
                path.display()
            )));
        }
        Ok(Scratch(path))
    }

    /// Leaves the directory in place: it is no longer scratch.
    fn keep(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() && self.0.exists() {
            if let Err(error) = fs::remove_dir_all(&self.0) {
                tracing::warn!(dir = %self.0.display(), %error, "could not remove a backup's scratch directory");
            }
        }
    }
}

/// Empties the consensus log's column family in a checkpoint: a restore
/// never uses it, and its files, written entries and the deletions of
/// compacted ones that RocksDB has not merged away yet, can weigh as much as
/// the state (a 1 GiB load left about as much again in the log's files). The
/// family is dropped and made again empty, so the checkpoint still opens
/// with every column family. Only the checkpoint's own links go: the store's
/// files are untouched.
fn drop_consensus_log(dir: &Path) -> Result<(), Error> {
    let mut db = DB::open_cf(&Options::default(), dir, COLUMN_FAMILIES)?;
    db.drop_cf(CF_LOG)?;
    db.create_cf(CF_LOG, &Options::default())?;
    Ok(())
}

/// Removes what opening a checkpoint leaves beside its database (RocksDB's
/// info logs and lock file), so that a backup lists the database's files.
fn remove_info_logs(dir: &Path) -> Result<(), Error> {
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "LOCK" || name == "LOG" || name.starts_with("LOG.old") {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
    }
    Ok(())
}

/// Opens a checkpoint read-only and reads its applied index and fingerprint,
/// refusing one that holds a partial snapshot install.
fn read_checkpoint(dir: &Path) -> Result<(u64, u64), Error> {
    let db = DB::open_cf_for_read_only(&Options::default(), dir, COLUMN_FAMILIES, false)?;
    let meta = db.cf_handle(CF_META).ok_or_else(|| Error::Corrupt {
        what: format!("the checkpoint in {} lacks column family 'meta'", dir.display()),
    })?;
    if db.get_pinned_cf(meta, crate::engine::META_SNAPSHOT_INSTALL)?.is_some() {
        return Err(Error::SnapshotIncomplete);
    }
    let applied = match db.get_cf(meta, META_APPLIED_INDEX)? {
        Some(bytes) => u64_from(&bytes, "meta applied index")?,
        None => 0,
    };
    Ok((applied, fingerprint_of(&db)?))
}

/// Takes backup `name` of `store` into `sink`. A new directory in
/// `scratch_parent` (on the store's file system, for hard links) holds the
/// checkpoint meanwhile and is removed after. A name the sink already holds
/// is refused.
pub fn take(
    store: &Store,
    scratch_parent: &Path,
    sink: &dyn BackupSink,
    name: &str,
) -> Result<Manifest, Error> {
    check_name(name)?;
    let started = Instant::now();
    let created_ms = cairn_util::now_ms();
    let _lock = sink.lock()?;
    if sink.manifest(name)?.is_some() {
        return Err(refused(format!("{} already holds a backup named {name:?}", sink.describe())));
    }
    let scratch = Scratch::new_in(scratch_parent, &format!("backup-{name}"))?;
    Checkpoint::new(store.db.as_ref())?.create_checkpoint(&scratch.0)?;
    drop_consensus_log(&scratch.0)?;
    let (applied_index, fingerprint) = read_checkpoint(&scratch.0)?;
    remove_info_logs(&scratch.0)?;
    let mut names = Vec::new();
    for entry in fs::read_dir(&scratch.0).map_err(io_error("list", &scratch.0))? {
        let entry = entry.map_err(io_error("list", &scratch.0))?;
        let name = entry.file_name().into_string().map_err(|n| {
            refused(format!("the checkpoint holds a file whose name is not UTF-8: {n:?}"))
        })?;
        names.push(name);
    }
    names.sort();
    let (mut files, mut bytes, mut new_bytes) = (Vec::new(), 0u64, 0u64);
    for file_name in names {
        let path = scratch.0.join(&file_name);
        let (sha256, size) = hash_file(&path)?;
        if !sink.has_file(&sha256)? {
            sink.put_file(&sha256, &path)?;
            new_bytes += size;
        }
        bytes += size;
        files.push(BackupFile { name: file_name, bytes: size, sha256 });
    }
    let manifest = Manifest {
        format: FORMAT,
        name: name.to_string(),
        applied_index,
        fingerprint: format!("{fingerprint:016x}"),
        cairn_version: cairn_util::version().to_string(),
        created_ms,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        bytes,
        new_bytes,
        files,
    };
    sink.put_manifest(&manifest)?;
    tracing::info!(name, applied_index, bytes, new_bytes, sink = %sink.describe(), "backup taken");
    Ok(manifest)
}

/// Deletes backup `name` and every file no other backup lists; whether it
/// existed. Also collects files a crashed taking left behind.
pub fn delete(sink: &dyn BackupSink, name: &str) -> Result<bool, Error> {
    check_name(name)?;
    let _lock = sink.lock()?;
    let existed = sink.delete_manifest(name)?;
    let kept: std::collections::BTreeSet<String> =
        sink.manifests()?.into_iter().flat_map(|m| m.files.into_iter().map(|f| f.sha256)).collect();
    for sha256 in sink.files()? {
        if !kept.contains(&sha256) {
            sink.delete_file(&sha256)?;
        }
    }
    Ok(existed)
}

/// Copies backup `name`'s files into `dir` (which must not exist), checking
/// each one's hash; the manifest. A file that does not match is refused,
/// named.
fn fetch(sink: &dyn BackupSink, name: &str, dir: &Path) -> Result<Manifest, Error> {
    let manifest = sink
        .manifest(name)?
        .ok_or_else(|| refused(format!("{} holds no backup named {name:?}", sink.describe())))?;
    fs::create_dir(dir).map_err(io_error("create", dir))?;
    for file in &manifest.files {
        let to = dir.join(&file.name);
        let got = sink.get_file(&file.sha256, &to).map_err(|e| {
            refused(format!(
                "backup {name:?}: file {} ({}) cannot be read: {e}",
                file.name, file.sha256
            ))
        })?;
        if got != file.sha256 {
            return Err(refused(format!(
                "backup {name:?}: file {} is corrupt: its SHA-256 is {got}, the manifest says {}",
                file.name, file.sha256
            )));
        }
    }
    Ok(manifest)
}

/// Checks every file of backup `name` against its hash, and the state it
/// holds against its fingerprint, fetching the files into a new directory
/// in `scratch_parent` and removing it after.
pub fn verify(sink: &dyn BackupSink, name: &str, scratch_parent: &Path) -> Result<Manifest, Error> {
    check_name(name)?;
    let dir = Scratch::new_in(scratch_parent, &format!("verify-{name}"))?;
    let manifest = fetch(sink, name, &dir.0)?;
    check_state(&manifest, &dir.0)?;
    Ok(manifest)
}

fn check_state(manifest: &Manifest, dir: &Path) -> Result<(), Error> {
    let (applied, fingerprint) = read_checkpoint(dir)?;
    let fingerprint = format!("{fingerprint:016x}");
    if applied != manifest.applied_index || fingerprint != manifest.fingerprint {
        return Err(refused(format!(
            "backup {:?} holds the state at index {applied} with fingerprint {fingerprint}; its \
             manifest says index {} with fingerprint {}",
            manifest.name, manifest.applied_index, manifest.fingerprint
        )));
    }
    Ok(())
}

/// Restores backup `name` from `sink` into `target`, a data directory that
/// must not exist or be empty, as a single node's store at the backup's
/// index. A new directory in `scratch_parent` holds the fetched files
/// meanwhile. Every check runs before `target` is written; if a later step
/// fails, what was made of `target` is removed.
pub fn restore(
    sink: &dyn BackupSink,
    name: &str,
    scratch_parent: &Path,
    target: &Path,
) -> Result<Manifest, Error> {
    check_name(name)?;
    let target_empty = match fs::read_dir(target) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(io_error("read", target)(e)),
    };
    if !target_empty {
        return Err(refused(format!(
            "{} is not empty: a backup is restored into a new data directory",
            target.display()
        )));
    }
    let dir = Scratch::new_in(scratch_parent, &format!("restore-{name}"))?;
    let manifest = fetch(sink, name, &dir.0)?;
    check_state(&manifest, &dir.0)?;
    // From here on `target` is written: remove it on failure.
    let made = Scratch(target.to_path_buf());
    let store = Store::open(target)?;
    let mut source = SnapshotSource::open_checkpoint(&dir.0)?;
    dir.keep(); // the source removes the checkpoint when dropped
    let mut install = SnapshotSink::begin(&store, source.applied_index())?;
    while let Some(chunk) = source.next_chunk(CHUNK_PAYLOAD_BYTES_DEFAULT)? {
        install.push(chunk)?;
    }
    install.finish()?;
    store.sync()?;
    let fingerprint = format!("{:016x}", store.state_fingerprint()?);
    if fingerprint != manifest.fingerprint {
        return Err(refused(format!(
            "the restored state's fingerprint is {fingerprint}, the backup's {}",
            manifest.fingerprint
        )));
    }
    drop(store);
    made.keep();
    tracing::info!(name, applied_index = manifest.applied_index, target = %target.display(), "backup restored");
    Ok(manifest)
}
