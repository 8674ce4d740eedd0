//! Installed versions: the node binaries a host can run, under
//! `<dir>/versions/<version>/cairn`, and how one gets there.
//!
//! Installing a version fetches its release artifact
//! (`cairn-<version>-<target>.tar.gz`) and the `SHA256SUMS` beside it from
//! the desired state's `artifacts` (a directory, or an `http://`/`https://`
//! URL), checks the artifact against its sum, unpacks it, and asks the
//! binary its version (`cairn --version`): an artifact whose binary is
//! another version than its name says is refused, naming both.
//!
//! Invariants:
//! - `versions/<version>/` appears whole or not at all: everything is
//!   fetched, checked and unpacked in a scratch directory beside it and
//!   renamed into place last. Two installs of one version race harmlessly:
//!   the second finds it installed.
//! - What the agent runs by itself (its own binary, `node_bin`) is its own
//!   version and is never installed or pruned.
//! - Pruning keeps the version the node runs and the one before it, so a
//!   downgrade needs no download.
//!
//! Not handled here: which version runs (the supervisor's intent) and when
//! (the control plane).

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::io::Write;

use crate::Error;

/// Largest `SHA256SUMS` fetched: a line per artifact.
const SUMS_BYTES_MAX: u64 = 1 << 20;
/// Largest artifact fetched (compressed, so below the binary's bound).
const ARTIFACT_BYTES_MAX: u64 = cairn_release::BINARY_BYTES_MAX;
/// How long a download may take, whole.
const DOWNLOAD_TIMEOUT_MS: u64 = 600_000;
/// How long `cairn --version` may take.
const VERSION_CHECK_TIMEOUT_MS: u64 = 30_000;

/// The versions directory of one host.
#[derive(Clone, Debug)]
pub(crate) struct Versions {
    /// `<dir>/versions`.
    pub dir: PathBuf,
    /// The agent's own binary: its version needs no install.
    pub own_bin: PathBuf,
}

fn install_error(version: &str, reason: impl std::fmt::Display) -> Error {
    Error::Install { version: version.to_string(), reason: reason.to_string() }
}

impl Versions {
    /// The binary that runs `version` (`None`: the agent's own), whether
    /// installed or not.
    pub fn binary(&self, version: Option<&str>) -> PathBuf {
        match version {
            Some(v) if v != cairn_util::version() => self.dir.join(v).join(cairn_release::BINARY),
            _ => self.own_bin.clone(),
        }
    }

    /// Whether `version` can run without a download.
    pub fn is_installed(&self, version: &str) -> bool {
        version == cairn_util::version() || self.binary(Some(version)).is_file()
    }

    /// Installs `version` from `artifacts` unless it is installed; answers
    /// its binary.
    pub async fn install(&self, version: &str, artifacts: Option<&str>) -> Result<PathBuf, Error> {
        cairn_release::check_version(version).map_err(|e| install_error(version, e))?;
        if self.is_installed(version) {
            return Ok(self.binary(Some(version)));
        }
        let Some(artifacts) = artifacts.map(str::trim).filter(|a| !a.is_empty()) else {
            return Err(install_error(
                version,
                "it is not installed on this host and no artifacts were named to install it \
                 from (set `artifacts` in the desired state)",
            ));
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("cannot create", &self.dir, e))?;
        // A random name keeps two installs apart.
        let suffix = cairn_util::secret::generate()
            .map_err(|e| Error::io("cannot draw", "randomness", e))?;
        let scratch =
            self.dir.join(format!(".install-{version}-{}", &suffix[..16.min(suffix.len())]));
        let result = self.install_in(&scratch, version, artifacts).await;
        if let Err(e) = std::fs::remove_dir_all(&scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", scratch.display());
            }
        }
        result
    }

    async fn install_in(
        &self,
        scratch: &Path,
        version: &str,
        artifacts: &str,
    ) -> Result<PathBuf, Error> {
        let name = cairn_release::artifact_name(version, cairn_release::TARGET);
        let fetched = scratch.join("fetched");
        std::fs::create_dir_all(&fetched).map_err(|e| Error::io("cannot create", &fetched, e))?;
        let artifact = fetched.join(&name);
        let sums = fetched.join(cairn_release::SUMS_FILE);
        fetch(artifacts, cairn_release::SUMS_FILE, &sums, SUMS_BYTES_MAX)
            .await
            .map_err(|e| install_error(version, e))?;
        fetch(artifacts, &name, &artifact, ARTIFACT_BYTES_MAX)
            .await
            .map_err(|e| install_error(version, e))?;
        let unpacked = scratch.join("version");
        let (artifact_c, sums_c, unpacked_c) = (artifact.clone(), sums.clone(), unpacked.clone());
        let binary = tokio::task::spawn_blocking(move || {
            cairn_release::verify(&artifact_c, &sums_c)?;
            cairn_release::unpack(&artifact_c, &unpacked_c)
        })
        .await
        .map_err(|e| install_error(version, format!("the unpacking task failed: {e}")))?
        .map_err(|e| install_error(version, name_source(e, artifacts)))?;
        let says = binary_version(&binary).await.map_err(|e| install_error(version, e))?;
        if says != version {
            return Err(install_error(
                version,
                format!("{name} holds a binary of version {says}, not {version}: refused"),
            ));
        }
        let dest = self.dir.join(version);
        match std::fs::rename(&unpacked, &dest) {
            Ok(()) => {}
            // Installed meanwhile by another call.
            Err(_) if self.is_installed(version) => {}
            Err(e) => return Err(Error::io("cannot install into", &dest, e)),
        }
        tracing::info!(version, from = artifacts, "version installed");
        Ok(self.binary(Some(version)))
    }

    /// Deletes installed versions other than those in `keep`; a failure is
    /// logged (a version left behind costs only space).
    pub fn prune(&self, keep: &[&str]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || keep.contains(&name.as_str()) {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(version = %name, "old version deleted"),
                Err(e) => tracing::warn!("cannot delete {}: {e}", entry.path().display()),
            }
        }
    }
}

/// A check's error as the operator needs it: naming the `SHA256SUMS` of
/// the artifacts they named, not the copy checked here.
fn name_source(error: cairn_release::Error, artifacts: &str) -> String {
    let sums = format!("{}/{}", artifacts.trim_end_matches('/'), cairn_release::SUMS_FILE);
    match error {
        cairn_release::Error::Mismatch { file, actual, expected, .. } => {
            format!("{file}: its SHA-256 is {actual}, but {sums} lists {expected}: refused")
        }
        cairn_release::Error::NotListed { file, .. } => format!("{file} is not listed in {sums}"),
        cairn_release::Error::Sums { line, reason, .. } => format!("{sums}: line {line}: {reason}"),
        other => other.to_string(),
    }
}

/// Copies `file` of `artifacts` (a directory or an http(s) URL) to `to`,
/// refusing more than `max` bytes.
async fn fetch(artifacts: &str, file: &str, to: &Path, max: u64) -> Result<(), String> {
    if artifacts.starts_with("http://") || artifacts.starts_with("https://") {
        let url = format!("{}/{file}", artifacts.trim_end_matches('/'));
        return download(&url, to, max).await;
    }
    let from = Path::new(artifacts).join(file);
    let to = to.to_path_buf();
    let copy = move || {
        let size = std::fs::metadata(&from)
            .map_err(|e| format!("cannot read {}: {e}", from.display()))?
            .len();
        if size > max {
            return Err(format!("{} is {size} bytes, more than the {max} allowed", from.display()));
        }
        std::fs::copy(&from, &to)
            .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
        Ok(())
    };
    tokio::task::spawn_blocking(copy).await.map_err(|e| format!("the copying task failed: {e}"))?
}

async fn download(url: &str, to: &Path, max: u64) -> Result<(), String> {
    cairn_tls::install_default_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(DOWNLOAD_TIMEOUT_MS))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("cannot download {url}: {e}"))?;
    if response.content_length().is_some_and(|n| n > max) {
        return Err(format!("{url} is larger than the {max} bytes allowed"));
    }
    // Chunks go to the page cache: small writes, not worth a thread each.
    let mut out =
        std::fs::File::create(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let mut written = 0u64;
    while let Some(chunk) =
        response.chunk().await.map_err(|e| format!("cannot download {url}: {e}"))?
    {
        written += chunk.len() as u64;
        if written > max {
            return Err(format!("{url} is larger than the {max} bytes allowed"));
        }
        out.write_all(&chunk).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    }
    out.flush().map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    Ok(())
}

/// What `<binary> --version` says it is (`cairn 0.1.0` → `0.1.0`).
async fn binary_version(binary: &Path) -> Result<String, String> {
    let run = tokio::process::Command::new(binary).arg("--version").output();
    let output = tokio::time::timeout(Duration::from_millis(VERSION_CHECK_TIMEOUT_MS), run)
        .await
        .map_err(|_| format!("{} --version did not answer", binary.display()))?
        .map_err(|e| format!("cannot run {} --version: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.trim().strip_prefix("cairn ") {
        Some(version) if output.status.success() && !version.is_empty() => {
            Ok(version.trim().to_string())
        }
        _ => Err(format!(
            "{} --version answered {:?}, not `cairn <version>`: not a Cairn binary",
            binary.display(),
            text.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script that answers `--version` as a Cairn binary of `says` would.
    fn fake_binary(dir: &Path, says: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("cairn-script");
        std::fs::write(&path, format!("#!/bin/sh\necho 'cairn {says}'\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn versions(dir: &Path) -> Versions {
        Versions { dir: dir.join("versions"), own_bin: dir.join("own-cairn") }
    }

    /// A good artifact installs whole (and twice is once); one whose binary
    /// is another version, or whose sum is not listed, is refused naming
    /// why, and leaves nothing installed; with no artifacts a missing
    /// version is refused; the agent's own version needs no install.
    #[tokio::test]
    async fn install_checks_sums_and_the_binary_version() {
        let tmp = tempfile::tempdir().unwrap();
        let releases = tmp.path().join("releases");
        let source = fake_binary(tmp.path(), "1.2.3");
        cairn_release::pack(&source, "1.2.3", cairn_release::TARGET, &releases).unwrap();
        let v = versions(tmp.path());
        let releases_text = releases.display().to_string();

        let binary = v.install("1.2.3", Some(&releases_text)).await.unwrap();
        assert_eq!(binary, tmp.path().join("versions/1.2.3/cairn"));
        assert!(v.is_installed("1.2.3"));
        assert_eq!(v.install("1.2.3", None).await.unwrap(), binary, "installed already");

        // Packed as 2.0.0, but the binary says 1.2.3.
        cairn_release::pack(&source, "2.0.0", cairn_release::TARGET, &releases).unwrap();
        let refused = v.install("2.0.0", Some(&releases_text)).await.unwrap_err().to_string();
        assert!(refused.contains("version 1.2.3, not 2.0.0"), "{refused}");
        assert!(!v.is_installed("2.0.0"));

        // Listed under another sum.
        let sums = releases.join(cairn_release::SUMS_FILE);
        let text = std::fs::read_to_string(&sums).unwrap();
        let name = cairn_release::artifact_name("1.2.3", cairn_release::TARGET);
        let wrong: String = text
            .lines()
            .map(|l| {
                if l.ends_with(&name) {
                    format!("{}  {name}\n", "0".repeat(64))
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&sums, wrong).unwrap();
        let other = versions(&tmp.path().join("other-host"));
        let refused = other.install("1.2.3", Some(&releases_text)).await.unwrap_err().to_string();
        assert!(refused.contains(&format!("{releases_text}/SHA256SUMS lists")), "{refused}");
        assert!(!other.is_installed("1.2.3"));
        let left: Vec<_> = std::fs::read_dir(&other.dir).unwrap().flatten().collect();
        assert!(left.is_empty(), "a refused install leaves nothing: {left:?}");

        let missing = other.install("3.0.0", None).await.unwrap_err().to_string();
        assert!(missing.contains("no artifacts were named"), "{missing}");
        assert_eq!(other.install(cairn_util::version(), None).await.unwrap(), other.own_bin);

        // Pruning keeps what it is told to keep.
        v.prune(&["9.9.9"]);
        assert!(!v.is_installed("1.2.3"));
    }
}
