//! Checker: a snapshot installs exactly the state that was served.
//!
//! A node serving a snapshot records the fingerprint of its state when it
//! takes the checkpoint; a node installing one records the fingerprint of
//! its state once the install finished. Every install must match a
//! checkpoint the same peer took for it, at the same index: a lost, torn,
//! reordered or foreign chunk shows as a state nobody served.

use std::collections::{BTreeMap, BTreeSet};

use cairn_consensus::driver::SnapshotEvent;
use cairn_consensus::replica::NodeId;

/// Checkpoints served, by (server, receiver), as (index, state).
#[derive(Default)]
pub struct Snapshots {
    served: BTreeMap<(NodeId, NodeId), BTreeSet<(u64, u64)>>,
    installed: u64,
    /// Installs that stopped short of the gap they were fetched for.
    short_of_gap: u64,
}

impl Snapshots {
    /// Snapshot events of `node`; answers the violations they show.
    pub fn observed(&mut self, node: NodeId, events: &[SnapshotEvent]) -> Vec<String> {
        let mut violations = Vec::new();
        for event in events {
            match *event {
                SnapshotEvent::Served { peer, applied_index, state } => {
                    self.served.entry((node, peer)).or_default().insert((applied_index, state));
                }
                SnapshotEvent::Installed { peer, applied_index, state, short_of_gap } => {
                    self.installed += 1;
                    self.short_of_gap += u64::from(short_of_gap);
                    let served = self
                        .served
                        .get(&(peer, node))
                        .is_some_and(|s| s.contains(&(applied_index, state)));
                    if !served {
                        violations.push(format!(
                            "node {node} installed a snapshot from node {peer} at index \
                             {applied_index} with a state node {peer} never served it"
                        ));
                    }
                }
            }
        }
        violations
    }

    /// Installs checked so far.
    pub fn installed(&self) -> u64 {
        self.installed
    }

    /// Installs that did not reach the end of their gap.
    pub fn short_of_gap(&self) -> u64 {
        self.short_of_gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_must_match_what_was_served() {
        let mut check = Snapshots::default();
        let served = SnapshotEvent::Served { peer: 2, applied_index: 9, state: 77 };
        assert!(check.observed(1, &[served]).is_empty());
        let good =
            SnapshotEvent::Installed { peer: 1, applied_index: 9, state: 77, short_of_gap: false };
        assert!(check.observed(2, &[good]).is_empty());
        let torn =
            SnapshotEvent::Installed { peer: 1, applied_index: 9, state: 78, short_of_gap: true };
        assert_eq!(check.observed(2, &[torn]).len(), 1);
        let elsewhere =
            SnapshotEvent::Installed { peer: 1, applied_index: 9, state: 77, short_of_gap: false };
        assert_eq!(check.observed(3, &[elsewhere]).len(), 1, "served to node 2, not 3");
        assert_eq!(check.installed(), 3);
        assert_eq!(check.short_of_gap(), 1);
    }
}
