//! The cluster version: the feature gate for changes to the log and the disk.
//!
//! A binary knows the commands of its own release. A command that an older
//! release lacks must not enter the log while a node of that release may
//! still apply it: that node could not decode it, and a downgrade back to it
//! would find it in the log. So every such change names the cluster version
//! that turns it on ([`Feature`]), and the cluster version lives in the
//! replicated system table, under [`CLUSTER_VERSION_KEY`], as
//! `{"version": "0.2"}`.
//!
//! - A cluster with no record runs at [`ClusterVersion::BASE`]: it was made
//!   before the gate existed, or nobody finalized an upgrade yet.
//! - A binary runs the cluster versions of its own release and of the one
//!   before ([`supported`]): a 0.2 binary runs clusters at 0.1 or 0.2. So a
//!   rolling upgrade from 0.1 to 0.2 mixes both, and a downgrade back to 0.1
//!   works, as long as the cluster version stays at 0.1.
//! - Finalizing raises the record, once every member runs a release that
//!   supports the new version. From then on the gated commands are accepted,
//!   and a binary that cannot run that version refuses the data directory
//!   and stops applying, naming both versions, rather than apply what it
//!   does not know. The record never goes down.
//!
//! Whether a gated command applies depends only on the record in the state
//! the command sees, so every replica answers alike, whatever it runs.

use serde_json::Value;

pub use cairn_util::cluster_version::{supported, supported_by, ClusterVersion, Supported};

/// The system table record that holds the cluster version.
pub const CLUSTER_VERSION_KEY: &str = "cluster_version";

/// A change to the log or the disk, and the cluster version that turns it on.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    pub name: &'static str,
    pub since: ClusterVersion,
}

impl Feature {
    /// Whether a cluster at `version` accepts this feature.
    pub fn allowed_at(self, version: ClusterVersion) -> bool {
        version >= self.since
    }

    /// Why a cluster at `cluster` refuses this feature, and what to do. The
    /// edge and the state machine give the same words.
    pub fn refusal(self, cluster: ClusterVersion) -> String {
        let since = self.since;
        format!(
            "{} needs cluster version {since}, and the cluster runs at {cluster}: once every node \
             runs Cairn {}.{} or newer, finalize the upgrade (`cairn cluster finalize`)",
            self.name, since.major, since.minor
        )
    }
}

/// `Op::KvIncrement`: a counter added to inside the state machine.
pub const KV_INCREMENT: Feature =
    Feature { name: "kv increment", since: ClusterVersion { major: 0, minor: 2 } };

/// The record's JSON text.
pub fn record_json(version: ClusterVersion) -> String {
    serde_json::json!({ "version": version.to_string() }).to_string()
}

/// Reads a record's JSON text.
pub fn from_record(json: &str) -> Result<ClusterVersion, String> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| format!("the cluster version record is not JSON: {e}"))?;
    match value.get("version").and_then(Value::as_str) {
        Some(text) => ClusterVersion::parse(text),
        None => Err("the cluster version record has no string 'version'".into()),
    }
}

/// The counter under a key of the key-value space, as `Op::KvIncrement`
/// reads it: decimal text of a signed 64-bit integer. `None` for a value
/// that is not one.
pub fn parse_counter(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        let v = ClusterVersion { major: 0, minor: 2 };
        assert_eq!(from_record(&record_json(v)), Ok(v));
        assert!(from_record("{}").unwrap_err().contains("no string 'version'"));
        assert!(from_record("nope").unwrap_err().contains("not JSON"));
        assert!(from_record(r#"{"version":"2"}"#).is_err());
    }

    #[test]
    fn this_build_runs_what_its_gated_features_need() {
        assert!(supported().max >= KV_INCREMENT.since);
        assert!(!KV_INCREMENT.allowed_at(ClusterVersion::BASE));
        let refusal = KV_INCREMENT.refusal(ClusterVersion::BASE);
        assert!(refusal.contains("needs cluster version 0.2"), "{refusal}");
        assert!(refusal.contains("runs at 0.1"), "{refusal}");
    }

    #[test]
    fn counters_are_plain_decimal_integers() {
        assert_eq!(parse_counter(b"0"), Some(0));
        assert_eq!(parse_counter(b"-42"), Some(-42));
        assert_eq!(parse_counter(b"9223372036854775807"), Some(i64::MAX));
        for bad in [&b""[..], b"-", b"+1", b" 1", b"1 ", b"1.0", b"9223372036854775808", b"\xff"] {
            assert_eq!(parse_counter(bad), None, "{bad:?}");
        }
    }
}
