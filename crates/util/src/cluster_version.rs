//! Cluster versions: which releases may run a cluster together.
//!
//! A cluster version is the major and minor number of the release whose
//! changes to the log and the disk it turns on (the gate itself, and the
//! record that holds it, live in the storage crate). A release runs the
//! cluster versions of its own and of the minor release before it
//! ([`supported_by`]), so a 0.2 binary runs clusters at 0.1 or 0.2: a rolling
//! upgrade mixes both, and a downgrade back works until the upgrade is
//! finalized.

use std::fmt;

/// A cluster version: the major and minor number of the release whose
/// features it turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterVersion {
    pub major: u64,
    pub minor: u64,
}

impl ClusterVersion {
    /// The version of a cluster with no record: made before the gate
    /// existed, or never finalized.
    pub const BASE: ClusterVersion = ClusterVersion { major: 0, minor: 1 };

    /// Parses `MAJOR.MINOR`.
    pub fn parse(text: &str) -> Result<ClusterVersion, String> {
        let bad = || format!("cluster version '{text}' is not MAJOR.MINOR (for example 0.2)");
        let (major, minor) = text.split_once('.').ok_or_else(bad)?;
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse::<u64>().map_err(|_| bad())
        };
        Ok(ClusterVersion { major: number(major)?, minor: number(minor)? })
    }

    /// The cluster version of a release version (`0.2.0`, `0.2.1-rc.1`):
    /// its major and minor number.
    pub fn of_release(release: &str) -> Result<ClusterVersion, String> {
        let core = release.split(['-', '+']).next().unwrap_or_default();
        let mut parts = core.splitn(3, '.');
        let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
            return Err(format!("release version '{release}' is not MAJOR.MINOR.PATCH"));
        };
        ClusterVersion::parse(&format!("{major}.{minor}"))
            .map_err(|_| format!("release version '{release}' is not MAJOR.MINOR.PATCH"))
    }
}

impl fmt::Display for ClusterVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The cluster versions one release runs, lowest and highest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Supported {
    pub min: ClusterVersion,
    pub max: ClusterVersion,
}

impl Supported {
    pub fn contains(self, version: ClusterVersion) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

impl fmt::Display for Supported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{} to {}", self.min, self.max)
        }
    }
}

/// The cluster versions a release runs: its own and the one before (a
/// `x.0` release runs only its own, as there is no minor release before it
/// to name), never below [`ClusterVersion::BASE`].
pub fn supported_by(release: &str) -> Result<Supported, String> {
    let max = ClusterVersion::of_release(release)?.max(ClusterVersion::BASE);
    let min = ClusterVersion { major: max.major, minor: max.minor.saturating_sub(1) }
        .max(ClusterVersion::BASE);
    Ok(Supported { min, max })
}

/// The cluster versions this binary runs, from its version stamp.
pub fn supported() -> Supported {
    // The stamp is checked to be a version when it is written; a binary
    // whose stamp is not one runs the base version only.
    supported_by(crate::version())
        .unwrap_or(Supported { min: ClusterVersion::BASE, max: ClusterVersion::BASE })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u64, minor: u64) -> ClusterVersion {
        ClusterVersion { major, minor }
    }

    #[test]
    fn versions_parse_and_print() {
        assert_eq!(ClusterVersion::parse("0.2"), Ok(v(0, 2)));
        assert_eq!(ClusterVersion::parse("12.34").unwrap().to_string(), "12.34");
        for bad in ["", "1", "1.", ".1", "1.2.3", "a.b", "-1.2", "1.+2", " 1.2"] {
            assert!(ClusterVersion::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(ClusterVersion::of_release("0.2.0"), Ok(v(0, 2)));
        assert_eq!(ClusterVersion::of_release("1.4.2-rc.1+build"), Ok(v(1, 4)));
        assert_eq!(ClusterVersion::of_release("0.1.0-next"), Ok(v(0, 1)));
        assert!(ClusterVersion::of_release("0").is_err());
        assert!(ClusterVersion::of_release("x.y.z").is_err());
    }

    #[test]
    fn a_release_runs_its_own_version_and_the_one_before() {
        let s = supported_by("0.2.0").unwrap();
        assert_eq!((s.min, s.max), (v(0, 1), v(0, 2)));
        assert_eq!(s.to_string(), "0.1 to 0.2");
        let s = supported_by("0.1.7").unwrap();
        assert_eq!((s.min, s.max), (v(0, 1), v(0, 1)));
        assert_eq!(s.to_string(), "0.1");
        let s = supported_by("0.5.1").unwrap();
        assert!(!s.contains(v(0, 3)) && s.contains(v(0, 4)) && s.contains(v(0, 5)));
        assert!(!s.contains(v(0, 6)));
        let s = supported_by("2.0.0").unwrap();
        assert_eq!((s.min, s.max), (v(2, 0), v(2, 0)));
        assert!(supported_by("banana").is_err());
    }
}
