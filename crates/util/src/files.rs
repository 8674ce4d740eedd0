//! The two file habits of the agent and the cloud: replace a file whole
//! (write a temporary beside it, flush it to disk, rename it over the old
//! one), and read a file with a bound on its size.
//!
//! A reader therefore sees the old contents or the new, never half of either,
//! even if the writer dies mid-write. The directory itself is synced after
//! the rename, so the new name survives a power cut too.
//!
//! Not handled: two processes writing the same file (one agent owns a host
//! directory, one cloud owns a root).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

/// Replaces `path` with `bytes`, atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o666)
}

/// [`write_atomic`] for a secret: the file is readable by its owner only,
/// from the moment it is created.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, |file| file.write_all(bytes))
}

/// Replaces `path` with what `write` writes, atomically and durably, the new
/// file having permission bits `mode` from the moment it is created. For
/// contents made as a stream (an archive, a download): `write` gets a
/// buffered writer, and an error of its own (`E`) is handed back after the
/// partial file is removed, leaving `path` as it was.
pub fn write_atomic_with<E: From<io::Error>>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut BufWriter<&File>) -> Result<(), E>,
) -> Result<(), E> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    // A temporary left by a writer that died may have another mode.
    match fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
    let written = (|| {
        let mut writer = BufWriter::new(&file);
        write(&mut writer)?;
        writer.flush()?;
        drop(writer);
        file.sync_all()?;
        fs::rename(&temp, path).map_err(E::from)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        // The rename is durable only once the directory entry is. A file
        // system that cannot sync a directory says EINVAL: the rename is
        // still atomic there, and nothing more can be done.
        match File::open(dir).and_then(|dir| dir.sync_all()) {
            Err(e) if e.raw_os_error() != Some(nix::libc::EINVAL) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Reads `path` whole: `None` when it does not exist, an `InvalidData` error
/// when it is over `max_bytes`.
pub fn read_capped(path: &Path, max_bytes: usize) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    // One byte over the limit is enough to know it is over.
    file.take(max_bytes as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the file is over the limit of {max_bytes} bytes"),
        ));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replaced file holds the new bytes and no temporary is left beside it.
    #[test]
    fn write_atomic_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").expect("first write");
        write_atomic(&path, b"two").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    /// A missing file is `None`; one over the limit is an error, one at the
    /// limit is read.
    #[test]
    fn read_capped_bounds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        assert!(read_capped(&path, 4).expect("missing is fine").is_none());
        fs::write(&path, b"1234").expect("write");
        assert_eq!(read_capped(&path, 4).expect("at the limit").as_deref(), Some(&b"1234"[..]));
        let over = read_capped(&path, 3).expect_err("over the limit");
        assert_eq!(over.kind(), io::ErrorKind::InvalidData);
    }
}
