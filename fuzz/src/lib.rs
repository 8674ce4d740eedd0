//! What the fuzz targets share: reading an input as records, and where their
//! stores go.

/// Splits `data` into records `[tag, length (2 bytes, big-endian), bytes]`;
/// a length past the end takes what is left.
pub fn records(data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut records = Vec::new();
    let mut rest = data;
    while let [tag, high, low, tail @ ..] = rest {
        let length = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (bytes, after) = tail.split_at(length);
        records.push((*tag, bytes));
        rest = after;
    }
    records
}

/// A fresh directory for a store: in memory when the machine has it.
pub fn scratch_dir() -> tempfile::TempDir {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    tempfile::tempdir_in(base).expect("a temporary directory")
}
