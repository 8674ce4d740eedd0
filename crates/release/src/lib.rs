//! Versioned release artifacts: how a Cairn binary travels from the build
//! that made it to the hosts that run it.
//!
//! An artifact is `cairn-<version>-<target>.tar.gz`: a gzipped tar that holds
//! one file, `cairn` (mode 0755), the binary of that version for that target
//! (`x86_64-unknown-linux-gnu`, say). A directory of artifacts holds
//! `SHA256SUMS` with one line per artifact, in the format `sha256sum` writes
//! (`<64 hex digits>  <file name>`), so `sha256sum -c SHA256SUMS` checks them
//! as well.
//!
//! - [`pack`]: a binary into an artifact in a directory, and its line into
//!   that directory's `SHA256SUMS` (added, or replaced when the artifact was
//!   made before). Both files are written aside and renamed into place, so a
//!   reader sees the old file or the new one, never half of one.
//! - [`read_sums`] and [`verify`]: the sum listed for a file, and the file
//!   checked against it; a file that is not listed, or whose sum differs, is
//!   refused with an error that names it.
//! - [`unpack`]: an artifact into a directory. Only `cairn`, a regular file
//!   of at most [`BINARY_BYTES_MAX`] bytes, is taken: an archive that holds
//!   anything else (another name, a link, a path that climbs out) is refused
//!   whole. The binary is written aside and renamed into place, executable.
//!
//! Not here: where artifacts come from (a directory or a URL) and which
//! version a host runs; the agents and the control plane decide those.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The file of sums in a directory of artifacts.
pub const SUMS_FILE: &str = "SHA256SUMS";
/// The one file an artifact holds.
pub const BINARY: &str = "cairn";
/// The target this build is for, as Cargo names it.
pub const TARGET: &str = env!("CAIRN_TARGET");
/// Largest binary an artifact may unpack to: a bound on what an archive
/// from elsewhere can make a host write.
pub const BINARY_BYTES_MAX: u64 = 1 << 30;
/// Longest version, in characters (as the desired state's `version`).
pub const VERSION_CHARS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("version {version:?}: {reason}")]
    Version { version: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: line {line}: {reason}", path.display())]
    Sums { path: PathBuf, line: usize, reason: String },
    #[error("{file} is not listed in {}", sums.display())]
    NotListed { file: String, sums: PathBuf },
    #[error("{file}: its SHA-256 is {actual}, but {} lists {expected}: refused", sums.display())]
    Mismatch { file: String, actual: String, expected: String, sums: PathBuf },
    #[error("{}: not a Cairn artifact: {reason}", path.display())]
    Archive { path: PathBuf, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Checks a version as the desired state does: 1 to [`VERSION_CHARS_MAX`]
/// characters of A-Z, a-z, 0-9, `.`, `+` and `-`.
pub fn check_version(version: &str) -> Result<(), Error> {
    let refuse = |reason: String| Error::Version { version: version.to_string(), reason };
    if version.is_empty() || version.chars().count() > VERSION_CHARS_MAX {
        return Err(refuse(format!("must be 1 to {VERSION_CHARS_MAX} characters")));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-');
    if let Some(bad) = version.chars().find(|&c| !allowed(c)) {
        return Err(refuse(format!("may hold only A-Z, a-z, 0-9, '.', '+' and '-', not {bad:?}")));
    }
    Ok(())
}

/// The file name of the artifact of `version` for `target`.
pub fn artifact_name(version: &str, target: &str) -> String {
    format!("cairn-{version}-{target}.tar.gz")
}

/// An artifact just made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub artifact: PathBuf,
    /// Its SHA-256, as lowercase hex.
    pub sha256: String,
    pub bytes: u64,
    /// The `SHA256SUMS` that lists it.
    pub sums: PathBuf,
}

/// Packs `binary` as the artifact of `version` for `target` into `out_dir`
/// (made if missing), and lists it in the directory's `SHA256SUMS`.
pub fn pack(binary: &Path, version: &str, target: &str, out_dir: &Path) -> Result<Packed, Error> {
    check_version(version)?;
    let source = File::open(binary).map_err(io_error(binary))?;
    let size = source.metadata().map_err(io_error(binary))?.len();
    fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let sums = out_dir.join(SUMS_FILE);
    // A broken SHA256SUMS is not overwritten: it is reported before anything.
    let mut listed = if sums.exists() { read_sums(&sums)? } else { BTreeMap::new() };
    let name = artifact_name(version, target);
    let artifact = out_dir.join(&name);
    write_file(&artifact, |file| {
        let gzip = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gzip);
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o755);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append_data(&mut header, BINARY, BufReader::new(source))?;
        tar.into_inner()?.finish()?.flush()
    })?;
    let sha256 = sha256_file(&artifact)?;
    let bytes = fs::metadata(&artifact).map_err(io_error(&artifact))?.len();
    listed.insert(name, sha256.clone());
    write_file(&sums, |file| {
        for (file_name, sum) in &listed {
            writeln!(file, "{sum}  {file_name}")?;
        }
        Ok(())
    })?;
    Ok(Packed { artifact, sha256, bytes, sums })
}

/// Replaces `path` with what `write` writes, atomically and durably.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> Result<(), Error> {
    cairn_util::files::write_atomic_with(path, 0o644, write).map_err(io_error(path))
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer).map_err(io_error(path))?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
    }
    Ok(context.finish().as_ref().iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The sums a `SHA256SUMS` file lists, by file name. Blank lines are
/// skipped; any other line must read `<64 hex digits>  <file name>` (or
/// `<hex> *<name>`, `sha256sum`'s binary mode), and a file listed twice is
/// refused.
pub fn read_sums(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let mut sums = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let refuse = |reason: &str| Error::Sums {
            path: path.to_path_buf(),
            line: number + 1,
            reason: reason.to_string(),
        };
        if line.trim().is_empty() {
            continue;
        }
        let (sum, rest) = line.split_at_checked(64).ok_or_else(|| {
            refuse("expected 64 hex digits, two spaces (or a space and '*') and a file name")
        })?;
        if !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse("the sum is not 64 hex digits"));
        }
        let name = rest
            .strip_prefix("  ")
            .or_else(|| rest.strip_prefix(" *"))
            .filter(|name| !name.is_empty())
            .ok_or_else(|| refuse("expected two spaces (or a space and '*') and a file name"))?;
        if name.contains('/') || name == "." || name == ".." {
            return Err(refuse("a file name must name a file of this directory"));
        }
        if sums.insert(name.to_string(), sum.to_ascii_lowercase()).is_some() {
            return Err(refuse("the file is listed twice"));
        }
    }
    Ok(sums)
}

/// Checks `artifact` against its line in `sums`; answers its SHA-256.
pub fn verify(artifact: &Path, sums: &Path) -> Result<String, Error> {
    let file =
        artifact.file_name().map(|name| name.to_string_lossy().into_owned()).ok_or_else(|| {
            Error::Archive { path: artifact.to_path_buf(), reason: "the path names no file".into() }
        })?;
    let listed = read_sums(sums)?;
    let expected = listed
        .get(&file)
        .ok_or_else(|| Error::NotListed { file: file.clone(), sums: sums.to_path_buf() })?;
    let actual = sha256_file(artifact)?;
    if actual != *expected {
        return Err(Error::Mismatch {
            file,
            actual,
            expected: expected.clone(),
            sums: sums.to_path_buf(),
        });
    }
    Ok(actual)
}

/// Unpacks the binary of `artifact` into `dest` (made if missing) as
/// `dest/cairn`; answers its path. Check the artifact with [`verify`] first.
/// A refused archive leaves `dest` as it was.
pub fn unpack(artifact: &Path, dest: &Path) -> Result<PathBuf, Error> {
    fs::create_dir_all(dest).map_err(io_error(dest))?;
    let binary = dest.join(BINARY);
    let file = File::open(artifact).map_err(io_error(artifact))?;
    let archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    cairn_util::files::write_atomic_with(&binary, 0o755, |out| copy_binary(archive, artifact, out))
        .map_err(|step| match step {
            Step::Write(source) => Error::Io { path: binary.clone(), source },
            Step::Refused(error) => error,
        })?;
    Ok(binary)
}

/// Why unpacking stopped: the binary could not be written, or the archive
/// was refused.
enum Step {
    Write(io::Error),
    Refused(Error),
}

impl From<io::Error> for Step {
    fn from(e: io::Error) -> Step {
        Step::Write(e)
    }
}

/// Checks every entry of `archive` (read from `artifact`) and copies its
/// binary to `out`.
fn copy_binary(
    mut archive: tar::Archive<impl Read>,
    artifact: &Path,
    out: &mut BufWriter<&File>,
) -> Result<(), Step> {
    let refuse =
        |reason: String| Step::Refused(Error::Archive { path: artifact.to_path_buf(), reason });
    let unreadable = |e: io::Error| {
        Step::Refused(Error::Archive {
            path: artifact.to_path_buf(),
            reason: format!("unreadable: {e}"),
        })
    };
    let mut found = false;
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let name = entry.path().map_err(unreadable)?.to_string_lossy().into_owned();
        if name != BINARY && name != format!("./{BINARY}") {
            return Err(refuse(format!("it holds {name:?}; an artifact holds only {BINARY:?}")));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(refuse(format!("{BINARY:?} is not a regular file")));
        }
        if found {
            return Err(refuse(format!("it holds {BINARY:?} twice")));
        }
        let size = entry.header().size().map_err(unreadable)?;
        if size > BINARY_BYTES_MAX {
            return Err(refuse(format!(
                "its binary of {size} bytes is over the limit of {BINARY_BYTES_MAX}"
            )));
        }
        let copied = io::copy(&mut (&mut entry).take(BINARY_BYTES_MAX), out).map_err(unreadable)?;
        if copied != size {
            return Err(refuse(format!("its binary ends after {copied} of {size} bytes")));
        }
        found = true;
    }
    if !found {
        return Err(refuse(format!("it holds no {BINARY:?}")));
    }
    // The mode asked for at creation is narrowed by the umask; a binary is
    // run by whoever runs the agent.
    out.get_ref().set_permissions(fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join("built-cairn");
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn an_artifact_round_trips_and_is_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let source = binary(dir.path(), b"\x7fELF the binary");
        let out = dir.path().join("out");
        let packed = pack(&source, "1.2.3", "x86_64-test", &out).unwrap();
        assert_eq!(packed.artifact, out.join("cairn-1.2.3-x86_64-test.tar.gz"));
        assert_eq!(verify(&packed.artifact, &packed.sums).unwrap(), packed.sha256);
        let unpacked = unpack(&packed.artifact, &dir.path().join("versions/1.2.3")).unwrap();
        assert_eq!(fs::read(&unpacked).unwrap(), b"\x7fELF the binary");
        let mode = fs::metadata(&unpacked).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // Packed again, and another version beside it: one line each.
        fs::write(&source, b"\x7fELF rebuilt").unwrap();
        let again = pack(&source, "1.2.3", "x86_64-test", &out).unwrap();
        pack(&source, "1.3.0", "x86_64-test", &out).unwrap();
        let sums = read_sums(&out.join(SUMS_FILE)).unwrap();
        assert_eq!(sums.len(), 2, "{sums:?}");
        assert_eq!(sums["cairn-1.2.3-x86_64-test.tar.gz"], again.sha256);
        assert_ne!(again.sha256, packed.sha256);
        let text = fs::read_to_string(out.join(SUMS_FILE)).unwrap();
        assert!(text.lines().all(|line| line.len() > 66 && &line[64..66] == "  "), "{text}");
        assert!(fs::read_dir(&out).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')));
    }

    #[test]
    fn a_changed_or_unlisted_artifact_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let packed = pack(&binary(dir.path(), b"bin"), "1.0.0", "t", dir.path()).unwrap();
        let mut bytes = fs::read(&packed.artifact).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&packed.artifact, &bytes).unwrap();
        let error = verify(&packed.artifact, &packed.sums).unwrap_err().to_string();
        assert!(error.contains("cairn-1.0.0-t.tar.gz") && error.contains("refused"), "{error}");
        let stranger = dir.path().join("cairn-9.9.9-t.tar.gz");
        fs::write(&stranger, b"x").unwrap();
        let error = verify(&stranger, &packed.sums).unwrap_err();
        assert!(matches!(error, Error::NotListed { .. }), "{error}");
    }

    #[test]
    fn bad_sums_files_are_refused_by_line_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let sums = dir.path().join(SUMS_FILE);
        let good = "a".repeat(64);
        for (text, line) in [
            (format!("{good}  one\nnot a sum\n"), 2),
            (format!("{}  one\n", "g".repeat(64)), 1),
            (format!("{good}one\n"), 1),
            (format!("{good}  ../escape\n"), 1),
            (format!("{good}  one\n\n{good}  one\n"), 3),
        ] {
            fs::write(&sums, &text).unwrap();
            match read_sums(&sums) {
                Err(Error::Sums { line: at, .. }) => assert_eq!(at, line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
            let error = pack(&binary(dir.path(), b"b"), "1.0.0", "t", dir.path()).unwrap_err();
            assert!(matches!(error, Error::Sums { .. }), "{error}");
            assert_eq!(fs::read_to_string(&sums).unwrap(), text, "left as it was");
        }
        fs::write(&sums, format!("{good} *binary-mode\n\n")).unwrap();
        assert_eq!(read_sums(&sums).unwrap()["binary-mode"], good);
    }

    #[test]
    fn bad_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for version in ["", "1.0/../x", "1 0", &"9".repeat(65)] {
            let error = pack(&binary(dir.path(), b"b"), version, "t", dir.path()).unwrap_err();
            assert!(matches!(error, Error::Version { .. }), "{version:?}: {error}");
        }
    }

    /// An archive of anything but one regular `cairn` is refused whole, and
    /// nothing of it is left behind.
    #[test]
    fn archives_that_are_not_artifacts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, entries: &[(&str, tar::EntryType)]| {
            let path = dir.path().join(name);
            let gzip = flate2::write::GzEncoder::new(
                File::create(&path).unwrap(),
                flate2::Compression::default(),
            );
            let mut tar = tar::Builder::new(gzip);
            for (entry, kind) in entries {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(*kind);
                header.set_size(if *kind == tar::EntryType::Regular { 3 } else { 0 });
                header.set_mode(0o755);
                if *kind == tar::EntryType::Symlink {
                    header.set_link_name("/etc/passwd").unwrap();
                }
                let data: &[u8] = if *kind == tar::EntryType::Regular { b"bin" } else { b"" };
                // The name is written raw, so names `append_data` would
                // refuse (`..`) can be tried too.
                let bytes = entry.as_bytes();
                header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
                header.set_cksum();
                tar.append(&header, data).unwrap();
            }
            tar.into_inner().unwrap().finish().unwrap();
            path
        };
        let regular = tar::EntryType::Regular;
        let cases = [
            make("other.tgz", &[("other", regular)]),
            make("climbs.tgz", &[("../cairn", regular)]),
            make("link.tgz", &[("cairn", tar::EntryType::Symlink)]),
            make("twice.tgz", &[("cairn", regular), ("cairn", regular)]),
            make("empty.tgz", &[]),
        ];
        for archive in cases {
            let dest = dir.path().join("dest");
            let error = unpack(&archive, &dest).unwrap_err();
            assert!(matches!(error, Error::Archive { .. }), "{}: {error}", archive.display());
            let left: Vec<_> =
                fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(left.is_empty(), "{}: left {left:?}", archive.display());
        }
        let garbage = dir.path().join("garbage.tgz");
        fs::write(&garbage, b"not gzip at all").unwrap();
        assert!(matches!(unpack(&garbage, &dir.path().join("d")), Err(Error::Archive { .. })));
    }
}
