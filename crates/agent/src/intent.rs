//! The agent's intent for its node, persisted in `<dir>/agent.json`, and the
//! one way the agent writes a small file durably.
//!
//! The intent is what the cluster last asked of this host: which node it
//! runs, whether the node is stopped, the restart generation it was
//! (re)started for, and the member to join through while it has no data. An
//! agent that restarts (crashed, upgraded, rebooted) reads it back and does
//! the same again: a node asked stopped stays stopped, a restart already done
//! for a generation is not done twice.
//!
//! Invariants:
//! - The file is replaced whole (write a temporary file, fsync it, rename it
//!   over, fsync the directory): a crash leaves the old intent or the new
//!   one, never a mix.
//! - The intent is written before the action it asks (a node is marked
//!   running before it is spawned, stopped before it is signalled), so a
//!   crash midway is finished by the next agent rather than undone.
//!
//! Not handled here: what the intent means (the supervisor decides) and
//! files edited by hand (a file that does not parse stops the agent with a
//! message naming it, rather than guessing).

use std::path::Path;

use cairn_util::files::{read_capped, write_atomic};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The largest `agent.json` read; the agent writes a few hundred bytes.
const INTENT_BYTES_MAX: usize = 64 * 1024;

/// What the cluster last asked of this host's node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Intent {
    /// The node this host runs; `None` before the first `StartNode`.
    pub node_id: Option<u64>,
    /// The restart generation the node was last (re)started for.
    pub restart_generation: u64,
    /// The cluster asked the node stopped: it is not run until a `StartNode`.
    pub stopped: bool,
    /// HTTP address of a member to join through while the node has no data.
    pub join: Option<String>,
    /// The version the node runs; `None`: the agent's own.
    #[serde(default)]
    pub version: Option<String>,
}

impl Intent {
    /// Reads the intent; a missing file is the intent of a new host.
    pub fn load(path: &Path) -> Result<Intent, Error> {
        let bytes = match read_capped(path, INTENT_BYTES_MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(Intent::default()),
            Err(e) => return Err(Error::io("cannot read", path, e)),
        };
        let intent: Intent = serde_json::from_slice(&bytes)
            .map_err(|e| Error::BadIntent { path: path.to_path_buf(), message: e.to_string() })?;
        if intent.node_id == Some(0) {
            return Err(Error::BadIntent {
                path: path.to_path_buf(),
                message: "node_id 0 is not a node id".into(),
            });
        }
        Ok(intent)
    }

    /// The version the node runs (or runs when it starts).
    pub fn node_version(&self) -> &str {
        self.version.as_deref().unwrap_or_else(|| cairn_util::version())
    }

    /// Replaces the intent durably.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        assert_ne!(self.node_id, Some(0), "node id 0 is never persisted");
        let mut text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::BadIntent { path: path.to_path_buf(), message: e.to_string() })?;
        text.push(b'\n');
        write_atomically(path, &text)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old file or
/// the new one (`cairn_util::files::write_atomic`).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_atomic(path, bytes).map_err(|e| Error::io("cannot write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A saved intent reads back the same; a missing file is a new host; a
    /// file that does not parse is refused with its path.
    #[test]
    fn intent_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.json");
        assert_eq!(Intent::load(&path).expect("missing is fine"), Intent::default());
        let intent = Intent {
            node_id: Some(3),
            restart_generation: 7,
            stopped: true,
            join: Some("127.0.0.1:7001".into()),
            version: Some("0.2.0".into()),
        };
        intent.save(&path).expect("save");
        assert_eq!(Intent::load(&path).expect("load"), intent);
        std::fs::write(&path, b"{not json").expect("write garbage");
        let err = Intent::load(&path).expect_err("garbage is refused");
        assert!(err.to_string().contains("agent.json"), "{err}");
        std::fs::write(
            &path,
            br#"{"node_id":0,"restart_generation":0,"stopped":false,"join":null}"#,
        )
        .expect("write zero id");
        assert!(Intent::load(&path).is_err(), "node id 0 is refused");
    }
}
