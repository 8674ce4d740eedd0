//! The version this binary is, kept as a stamp in the binary's data.
//!
//! The stamp is [`STAMP_MARKER`], then the version, then NUL bytes up to
//! [`STAMP_BYTES`], in one static the linker keeps. [`version`] reads it
//! back at run time (through volatile reads, so the compiler cannot fold the
//! build's value in), and [`restamp`] writes another version into a copy of
//! a binary's bytes, as Go's `-ldflags -X` sets a version at link time.
//!
//! Restamping is how a test gets a second, distinct binary of another
//! version without a second build of the workspace: the rolling-upgrade
//! tests run a cluster across two versions of one build. Everything a
//! version gates is keyed to the version the stamp names.

use std::sync::OnceLock;

/// What precedes the version in the binary.
pub const STAMP_MARKER: &[u8; 20] = b"cairn-version-stamp:";
/// The longest version a stamp holds (as the desired state's `version`).
pub const STAMP_VERSION_MAX: usize = 64;
/// The stamp's whole size: the marker and the NUL-padded version.
pub const STAMP_BYTES: usize = STAMP_MARKER.len() + STAMP_VERSION_MAX;

const fn stamp(version: &str) -> [u8; STAMP_BYTES] {
    let mut out = [0u8; STAMP_BYTES];
    let mut i = 0;
    while i < STAMP_MARKER.len() {
        out[i] = STAMP_MARKER[i];
        i += 1;
    }
    let version = version.as_bytes();
    assert!(!version.is_empty() && version.len() <= STAMP_VERSION_MAX, "version too long");
    let mut j = 0;
    while j < version.len() {
        out[STAMP_MARKER.len() + j] = version[j];
        j += 1;
    }
    out
}

#[used]
static STAMP: [u8; STAMP_BYTES] = stamp(env!("CARGO_PKG_VERSION"));

/// The version of Cairn this binary is: the one its stamp names (the
/// workspace's version, unless the binary was restamped).
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let base = std::ptr::addr_of!(STAMP).cast::<u8>();
        // SAFETY: every index is inside STAMP, a static of STAMP_BYTES bytes.
        let bytes: Vec<u8> = (STAMP_MARKER.len()..STAMP_BYTES)
            .map(|i| unsafe { std::ptr::read_volatile(base.add(i)) })
            .take_while(|&b| b != 0)
            .collect();
        match String::from_utf8(bytes) {
            Ok(text) if !text.is_empty() => text,
            // A stamp written by hand that is not a version.
            _ => env!("CARGO_PKG_VERSION").to_string(),
        }
    })
}

/// Why a binary cannot be restamped.
#[derive(Debug, PartialEq, Eq)]
pub enum RestampError {
    /// The version does not fit a stamp.
    Version(String),
    /// The bytes hold no stamp.
    NotFound,
    /// The bytes hold more than one stamp (how many).
    Several(usize),
}

impl std::fmt::Display for RestampError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestampError::Version(v) => write!(
                f,
                "version {v:?} does not fit a stamp (1 to {STAMP_VERSION_MAX} of A-Z a-z 0-9 . + -)"
            ),
            RestampError::NotFound => write!(f, "no version stamp of Cairn found in the binary"),
            RestampError::Several(n) => {
                write!(f, "{n} version stamps found in the binary; expected one")
            }
        }
    }
}

impl std::error::Error for RestampError {}

/// Writes `version` into the one stamp of a binary's bytes, in place.
pub fn restamp(binary: &mut [u8], version: &str) -> Result<(), RestampError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b".+-".contains(&b);
    if version.is_empty() || version.len() > STAMP_VERSION_MAX || !version.bytes().all(allowed) {
        return Err(RestampError::Version(version.to_string()));
    }
    // A stamp is the marker, a version (A-Z a-z 0-9 . + -), and NULs to its
    // end: the marker alone (as it appears in this very code) is not one.
    let is_stamp = |at: usize| {
        let Some(window) = binary.get(at..at + STAMP_BYTES) else { return false };
        let rest = &window[STAMP_MARKER.len()..];
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        window.starts_with(STAMP_MARKER)
            && len > 0
            && rest[..len].iter().all(|&b| b.is_ascii_alphanumeric() || b".+-".contains(&b))
            && rest[len..].iter().all(|&b| b == 0)
    };
    let found: Vec<usize> = binary
        .windows(STAMP_MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == STAMP_MARKER)
        .map(|(at, _)| at)
        .filter(|&at| is_stamp(at))
        .collect();
    let at = match found.as_slice() {
        [] => return Err(RestampError::NotFound),
        [at] => *at,
        many => return Err(RestampError::Several(many.len())),
    };
    let new = stamp_bytes(version);
    binary[at..at + STAMP_BYTES].copy_from_slice(&new);
    Ok(())
}

fn stamp_bytes(version: &str) -> [u8; STAMP_BYTES] {
    let mut out = [0u8; STAMP_BYTES];
    out[..STAMP_MARKER.len()].copy_from_slice(STAMP_MARKER);
    out[STAMP_MARKER.len()..STAMP_MARKER.len() + version.len()].copy_from_slice(version.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_names_the_workspace_version() {
        assert_eq!(version(), env!("CARGO_PKG_VERSION"));
        assert_eq!(STAMP, stamp_bytes(env!("CARGO_PKG_VERSION")));
    }

    /// One stamp amid other bytes is rewritten; none, two, or a version that
    /// does not fit are refused and leave the bytes alone.
    #[test]
    fn restamp_rewrites_exactly_one_stamp() {
        let mut binary = b"\x7fELF....".to_vec();
        binary.extend_from_slice(STAMP_MARKER); // the marker alone: no stamp
        binary.extend_from_slice(b"code");
        binary.extend_from_slice(&stamp_bytes("0.1.0"));
        binary.extend_from_slice(b"tail");
        let before = binary.clone();
        restamp(&mut binary, "0.2.0-next").expect("one stamp");
        assert_eq!(binary.len(), before.len());
        let at = before.len() - 4 - STAMP_BYTES;
        assert_eq!(&binary[at..at + STAMP_BYTES], &stamp_bytes("0.2.0-next"));
        assert_eq!(binary[..at], before[..at]);

        let long = "9".repeat(STAMP_VERSION_MAX + 1);
        assert_eq!(restamp(&mut binary, &long), Err(RestampError::Version(long.clone())));
        assert_eq!(restamp(&mut binary, ""), Err(RestampError::Version(String::new())));
        let mut none = b"no stamp here".to_vec();
        assert_eq!(restamp(&mut none, "1"), Err(RestampError::NotFound));
        let mut two = [stamp_bytes("1"), stamp_bytes("2")].concat();
        assert_eq!(restamp(&mut two, "3"), Err(RestampError::Several(2)));
        assert_eq!(two, [stamp_bytes("1"), stamp_bytes("2")].concat());
    }
}
