//! The on-disk format version: recorded when a store is opened, and a store
//! in a format this build cannot read is refused with both versions named,
//! before anything is read or written.

use cairn_storage::engine::FORMAT_VERSION;
use cairn_storage::{Error, Store};

const LOG_META: &str = "log_meta";

fn raw(dir: &std::path::Path) -> rocksdb::DB {
    let cfs =
        ["tables", "docs", "kv", "sessions", "session_lru", "changes", "meta", "log", LOG_META];
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, cfs).unwrap()
}

fn recorded(dir: &std::path::Path) -> Option<u64> {
    let db = raw(dir);
    let bytes = db.get_cf(db.cf_handle(LOG_META).unwrap(), b"format_version").unwrap()?;
    Some(u64::from_be_bytes(bytes.as_slice().try_into().unwrap()))
}

/// A new store records this build's format; a store that has none (from
/// before formats were recorded) opens and gets it.
#[test]
fn opening_records_the_format() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    assert_eq!(recorded(dir.path()), Some(FORMAT_VERSION));
    {
        let db = raw(dir.path());
        db.delete_cf(db.cf_handle(LOG_META).unwrap(), b"format_version").unwrap();
    }
    assert_eq!(recorded(dir.path()), None);
    drop(Store::open(dir.path()).unwrap());
    assert_eq!(recorded(dir.path()), Some(FORMAT_VERSION));
}

/// A store written in a newer format (or a garbled one) is refused, naming
/// the directory, its format and the formats this build reads; the record
/// is left as it was.
#[test]
fn a_store_in_a_format_this_build_cannot_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    {
        let db = raw(dir.path());
        db.put_cf(db.cf_handle(LOG_META).unwrap(), b"format_version", 7u64.to_be_bytes()).unwrap();
    }
    let error = Store::open(dir.path()).err().expect("refused");
    assert!(matches!(error, Error::Format { found: 7, .. }), "{error:?}");
    let text = error.to_string();
    let dir_text = dir.path().display().to_string();
    assert!(text.contains("format 7") && text.contains(&dir_text), "{text}");
    assert!(text.contains(&format!("reads format {FORMAT_VERSION}")), "{text}");
    assert_eq!(recorded(dir.path()), Some(7));
    {
        let db = raw(dir.path());
        db.put_cf(db.cf_handle(LOG_META).unwrap(), b"format_version", b"x").unwrap();
    }
    assert!(matches!(Store::open(dir.path()), Err(Error::Corrupt { .. })));
}
