//! The change history: every change the state machine makes to a document or
//! a key, in log order, kept for a window so that changefeeds can resume from
//! a cursor on any replica with no gap and no duplicate.
//!
//! The state machine writes a change's records in the same `WriteBatch` as the
//! change itself, so the history and the state never disagree, and every
//! replica writes the same records at the same positions (the history is a
//! function of the log, like the state). A change is identified by its
//! [`Cursor`]: the log index of the entry that made it and its position among
//! that entry's changes (an insert of many documents makes many).
//!
//! Layout, in the `changes` column family: each change is two records, so
//! that neither exceeds one snapshot pair however large the document:
//! - `index ++ position ++ 0` → the subject and the old value ([`Head`]);
//! - `index ++ position ++ 1` → the new value.
//!
//! (`index` big-endian u64, `position` big-endian u32.)
//!
//! The window: the history keeps at least the last [`Window::entries`] log
//! entries' changes and at most about [`Window::bytes`] bytes of records,
//! trimmed whole entries at a time from the oldest, with some slack so that
//! trimming runs once in a while rather than at every batch. `meta` records
//! where the history begins (`changes_first`: every change of that index and
//! after is kept) and its size; both travel with snapshots, so a replica that
//! caught up from one keeps the history its peer had, and knows where it
//! begins. A cursor before the beginning is [`Expired`], never a silent gap.
//! The window is each node's own setting, so replicas may keep different
//! lengths of the same history.
//!
//! Not here: delivering changes (the server's feeds), and any notion of time.

use rocksdb::{Direction, IteratorMode, ReadOptions};
use serde::{Deserialize, Serialize};

use crate::engine::{u64_from, Store, CF_CHANGES, CF_META};
use crate::Error;

/// In `meta`: the first index whose changes are all kept.
pub(crate) const META_CHANGES_FIRST: &[u8] = b"changes_first";
/// In `meta`: the bytes of every record of the history, keys included.
pub(crate) const META_CHANGES_BYTES: &[u8] = b"changes_bytes";

/// The position of a cursor that stands after every change of its index.
const END_OF_INDEX: u32 = u32::MAX;

/// How much history a node keeps unless told otherwise.
pub const WINDOW_ENTRIES_DEFAULT: u64 = 100_000;
pub const WINDOW_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// A place in the history: after the change at `position` of the entry at
/// `index`, or after every change of that entry. Ordered as the history is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub index: u64,
    pub position: u32,
}

impl Cursor {
    /// The cursor after every change of `index` (and before any of the next).
    pub fn end_of(index: u64) -> Cursor {
        Cursor { index, position: END_OF_INDEX }
    }

    /// The cursor of the change at `position` of `index`.
    pub fn at(index: u64, position: u32) -> Cursor {
        Cursor { index, position }
    }

    /// Reads a cursor as [`Cursor::to_string`] writes it. The text is opaque
    /// to clients; the error names what is wrong.
    pub fn parse(text: &str) -> Result<Cursor, String> {
        let bad = || {
            format!("cursor {text:?} is not one this cluster made: pass an event's id unchanged")
        };
        let (index, position) = match text.split_once('.') {
            Some((index, position)) => (index, Some(position)),
            None => (text, None),
        };
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(index) {
            return Err(bad());
        }
        let index: u64 = index.parse().map_err(|_| bad())?;
        match position {
            None => Ok(Cursor::end_of(index)),
            Some(position) if digits(position) => {
                let position: u32 = position.parse().map_err(|_| bad())?;
                if position == END_OF_INDEX {
                    return Err(bad());
                }
                Ok(Cursor::at(index, position))
            }
            Some(_) => Err(bad()),
        }
    }

    fn is_end_of_index(&self) -> bool {
        self.position == END_OF_INDEX
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_end_of_index() {
            write!(f, "{}", self.index)
        } else {
            write!(f, "{}.{}", self.index, self.position)
        }
    }
}

/// What a change is to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    /// A document, created, replaced, updated or deleted.
    Doc { table: String, id: String },
    /// A table and every document in it, dropped.
    TableDropped { table: String },
    /// A key of the key-value space, written or deleted.
    Kv { key: String },
}

/// One change, as the history holds it: documents as JSON text, values as
/// raw bytes; `None` where there was or is nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub cursor: Cursor,
    pub subject: Subject,
    pub old: Option<Vec<u8>>,
    pub new: Option<Vec<u8>>,
}

/// Which changes a reader wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Every change.
    All,
    /// The documents of one table (and its drop), or of one document in it.
    Table { table: String, id: Option<String> },
    /// The keys that start with a prefix.
    Kv { prefix: String },
}

impl Filter {
    /// Whether a change to `subject` is one this filter lets through.
    pub fn admits(&self, subject: &Subject) -> bool {
        match (self, subject) {
            (Filter::All, _) => true,
            (Filter::Table { table, id }, Subject::Doc { table: t, id: i }) => {
                table == t && id.as_ref().is_none_or(|id| id == i)
            }
            (Filter::Table { table, .. }, Subject::TableDropped { table: t }) => table == t,
            (Filter::Kv { prefix }, Subject::Kv { key }) => key.starts_with(prefix.as_str()),
            _ => false,
        }
    }
}

/// How much history a node keeps (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The last this many log entries' changes are kept; 0 keeps none.
    pub entries: u64,
    /// Trimming begins when the records take more than this.
    pub bytes: u64,
}

impl Default for Window {
    fn default() -> Window {
        Window { entries: WINDOW_ENTRIES_DEFAULT, bytes: WINDOW_BYTES_DEFAULT }
    }
}

/// The history no longer holds what follows the cursor asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    /// The first index whose changes this node keeps.
    pub first: u64,
}

/// Changes read from a cursor on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The changes the filter admits, in history order.
    pub changes: Vec<Change>,
    /// Where the next read goes on from: past every change looked at,
    /// admitted or not. The same as the cursor asked for when nothing new
    /// was there.
    pub next: Cursor,
    /// The applied index the page was read at.
    pub applied_index: u64,
}

/// Bounds on one read of the history.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most changes returned.
    pub changes: usize,
    /// Bytes of values after which the page ends (one change always goes).
    pub bytes: usize,
    /// Most changes looked at, admitted or not.
    pub scanned: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { changes: 256, bytes: 4 * 1024 * 1024, scanned: 4096 }
    }
}

/// Where the history begins, from `meta`'s record of it (0 when absent): a
/// state without the record (made before histories were kept, or received
/// from such a node) has none of its past, and begins after what it applied.
fn first_of(recorded: u64, applied_index: u64) -> u64 {
    if recorded == 0 {
        applied_index + 1
    } else {
        recorded
    }
}

pub(crate) fn record_key(index: u64, position: u32, part: u8) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..8].copy_from_slice(&index.to_be_bytes());
    key[8..12].copy_from_slice(&position.to_be_bytes());
    key[12] = part;
    key
}

fn parse_key(key: &[u8]) -> Result<(u64, u32, u8), Error> {
    if key.len() != 13 || key[12] > 1 {
        return Err(Error::Corrupt { what: format!("a change record key of {} bytes", key.len()) });
    }
    let index = u64_from(&key[..8], "change index")?;
    let position = u32::from_be_bytes(key[8..12].try_into().expect("4 bytes"));
    Ok((index, position, key[12]))
}

/// The two records of a change, as (key, value) pairs: the subject (postcard)
/// followed by the old value, and the new value; a value is `1 ++ bytes`,
/// or nothing for none.
pub(crate) fn encode(
    index: u64,
    position: u32,
    subject: &Subject,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
) -> [([u8; 13], Vec<u8>); 2] {
    let value = |prefix: Vec<u8>, bytes: Option<&[u8]>| {
        let mut value = prefix;
        if let Some(bytes) = bytes {
            value.reserve_exact(1 + bytes.len());
            value.push(1);
            value.extend_from_slice(bytes);
        }
        value
    };
    let subject = postcard::to_stdvec(subject).expect("a subject always encodes");
    [
        (record_key(index, position, 0), value(subject, old)),
        (record_key(index, position, 1), value(Vec::new(), new)),
    ]
}

/// A value as [`encode`] wrote it.
fn decode_value(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    match bytes.split_first() {
        None => Ok(None),
        Some((1, value)) => Ok(Some(value.to_vec())),
        Some((tag, _)) => Err(format!("a value tagged {tag}")),
    }
}

fn corrupt(index: u64, position: u32, e: impl std::fmt::Display) -> Error {
    Error::Corrupt { what: format!("change {index}.{position}: {e}") }
}

impl Store {
    /// The first index whose changes this node keeps.
    pub fn changes_first(&self) -> Result<u64, Error> {
        let applied = self.read_meta_u64(crate::engine::META_APPLIED_INDEX)?;
        Ok(first_of(self.read_meta_u64(META_CHANGES_FIRST)?, applied))
    }

    /// The bytes the history takes (its records, keys included).
    pub fn changes_bytes(&self) -> Result<u64, Error> {
        self.read_meta_u64(META_CHANGES_BYTES)
    }

    /// The changes after `after` that `filter` admits, up to the applied
    /// index, within `limits`; all read from one state. [`Expired`] when the
    /// history no longer reaches back to `after`. A cursor past the applied
    /// index reads nothing (the page's `next` is that cursor).
    pub fn changes_after(
        &self,
        after: Cursor,
        filter: &Filter,
        limits: Limits,
    ) -> Result<Result<Page, Expired>, Error> {
        let snapshot = self.db.snapshot();
        let meta = |key: &[u8]| -> Result<u64, Error> {
            match snapshot.get_cf(self.cf(CF_META), key)? {
                Some(bytes) => u64_from(&bytes, "meta value"),
                None => Ok(0),
            }
        };
        let applied_index = meta(crate::engine::META_APPLIED_INDEX)?;
        let first = first_of(meta(META_CHANGES_FIRST)?, applied_index);
        // Every change after `after` is kept when all of `after.index`'s are,
        // or when `after` stands past its index and the next is kept.
        let kept = after.index >= first || (after.is_end_of_index() && after.index + 1 >= first);
        if !kept {
            return Ok(Err(Expired { first }));
        }
        let mut page = Page { changes: Vec::new(), next: after, applied_index };
        if after.index >= applied_index && (after.is_end_of_index() || after.index > applied_index)
        {
            return Ok(Ok(page));
        }
        let start = if after.is_end_of_index() {
            record_key(after.index + 1, 0, 0)
        } else {
            record_key(after.index, after.position + 1, 0)
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(record_key(applied_index + 1, 0, 0).to_vec());
        let cf = self.cf(CF_CHANGES);
        let mut records =
            snapshot.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward));
        let (mut scanned, mut bytes) = (0, 0);
        let mut complete = true;
        let mut planted_skip = self.planted_skip_on_resume() && !after.is_end_of_index();
        while let Some(item) = records.next() {
            if scanned == limits.scanned
                || page.changes.len() == limits.changes
                || (bytes >= limits.bytes && !page.changes.is_empty())
            {
                complete = false;
                break;
            }
            let (key, head) = item?;
            let (index, position, part) = parse_key(&key)?;
            if part != 0 {
                return Err(corrupt(index, position, "a new value without its head"));
            }
            let new = match records.next() {
                Some(item) => item?,
                None => return Err(corrupt(index, position, "a head without its new value")),
            };
            if parse_key(&new.0)? != (index, position, 1) {
                return Err(corrupt(index, position, "a head without its new value"));
            }
            scanned += 1;
            let (subject, old) = postcard::take_from_bytes::<Subject>(&head)
                .map_err(|e| corrupt(index, position, e))?;
            let cursor = Cursor::at(index, position);
            page.next = cursor;
            if !filter.admits(&subject) || std::mem::take(&mut planted_skip) {
                continue;
            }
            let old = decode_value(old).map_err(|e| corrupt(index, position, e))?;
            let new = decode_value(&new.1).map_err(|e| corrupt(index, position, e))?;
            bytes += old.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len);
            page.changes.push(Change { cursor, subject, old, new });
        }
        if complete {
            page.next = Cursor::end_of(applied_index);
        }
        Ok(Ok(page))
    }
}

impl Store {
    /// Plants a bug for the simulator to catch: a read that resumes inside
    /// an entry skips the next change.
    #[cfg(feature = "planted-bugs")]
    pub fn plant_skip_on_resume(&self) {
        self.planted_skip_on_resume.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn planted_skip_on_resume(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted_skip_on_resume.load(std::sync::atomic::Ordering::Relaxed)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }
}

/// What the state machine keeps of the history's bounds while it applies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kept {
    pub first: u64,
    pub bytes: u64,
}

impl Kept {
    pub(crate) fn read(store: &Store) -> Result<Kept, Error> {
        Ok(Kept { first: store.changes_first()?, bytes: store.changes_bytes()? })
    }
}

/// Where the history should begin for it to fit `window`, trimming only
/// records already in the store (those of indexes up to `committed`), whole
/// entries at a time: `None` while it fits, with slack. Answers the new
/// beginning and the bytes it frees.
pub(crate) fn trim_to(
    store: &Store,
    kept: Kept,
    window: Window,
    applied: u64,
    committed: u64,
) -> Result<Option<(u64, u64)>, Error> {
    let entries = applied + 1 - kept.first.min(applied + 1);
    let over_entries = entries > window.entries.saturating_add(window.entries / 8);
    let over_bytes = kept.bytes > window.bytes.saturating_add(window.bytes / 8);
    if !over_entries && !over_bytes {
        return Ok(None);
    }
    let first_by_entries = (applied + 1).saturating_sub(window.entries);
    let limit = committed + 1;
    let mut freed = 0u64;
    let mut first = kept.first;
    let cf = store.cf(CF_CHANGES);
    let start = record_key(kept.first, 0, 0);
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(record_key(limit, 0, 0).to_vec());
    let mut current = None;
    for item in store.db.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward)) {
        let (key, value) = item?;
        let (index, _, _) = parse_key(&key)?;
        if current != Some(index) {
            // A new entry: stop here once the rest fits.
            if index >= first_by_entries && kept.bytes - freed <= window.bytes {
                first = index;
                current = None;
                break;
            }
            current = Some(index);
        }
        freed += (key.len() + value.len()) as u64;
    }
    if let Some(index) = current {
        // Every committed record went: the history begins after the last.
        first = index + 1;
    }
    first = first.max(first_by_entries.min(limit));
    if first <= kept.first {
        return Ok(None);
    }
    Ok(Some((first, freed)))
}
