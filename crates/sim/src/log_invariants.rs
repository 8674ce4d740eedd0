//! Checker: each node's log and state move only the ways they may.
//!
//! Looked at after every poll of every node:
//! - nothing is applied that no node decided;
//! - the applied and decided indexes and the configuration never go back,
//!   across restarts too (a process crash keeps what was written), except
//!   the applied index after a restart that wiped a half-installed snapshot,
//!   and both indexes after a power cut (which loses what was not synced);
//! - nothing is compacted that the node has not decided itself (a compacted
//!   index past the decided index is how OmniPaxos 0.2.4 once synced
//!   followers with entries missing: patch 1 of `vendor/omnipaxos`, seed
//!   7001029);
//! - the log stays bounded: each compaction leaves at most the configured
//!   number of entries behind what the node had applied.

use std::collections::BTreeMap;

use cairn_consensus::replica::NodeId;

/// One node's progress, as seen after a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub applied: u64,
    pub decided: u64,
    pub compacted: u64,
    /// The index before the node's configuration's first entry.
    pub base: u64,
    pub configuration_id: u32,
    /// Whether the node compacted its log in the tick just polled.
    pub compacted_this_tick: bool,
}

/// What was seen of each node, and the highest decided index anywhere.
pub struct LogInvariants {
    retain_entries: u64,
    nodes: BTreeMap<NodeId, Seen>,
    max_decided: u64,
}

struct Seen {
    progress: Progress,
    /// The state was wiped at the last restart: the applied index may start
    /// over once.
    wiped: bool,
}

impl LogInvariants {
    /// `retain_entries`: the entries each node keeps behind its applied
    /// index when it compacts.
    pub fn new(retain_entries: u64) -> LogInvariants {
        LogInvariants { retain_entries, nodes: BTreeMap::new(), max_decided: 0 }
    }

    /// `node`'s progress after a poll; answers the violations it shows.
    pub fn observed(&mut self, node: NodeId, now: Progress) -> Vec<String> {
        let mut violations = Vec::new();
        self.max_decided = self.max_decided.max(now.decided);
        if now.applied > self.max_decided {
            violations.push(format!(
                "node {node} applied through {} but no node decided past {}",
                now.applied, self.max_decided
            ));
        }
        if now.compacted > now.decided {
            violations.push(format!(
                "node {node} compacted through {} but decided only through {}",
                now.compacted, now.decided
            ));
        }
        if let Some(seen) = self.nodes.get(&node) {
            let before = seen.progress;
            if now.applied < before.applied && !seen.wiped {
                violations.push(format!(
                    "node {node}'s applied index went back from {} to {}",
                    before.applied, now.applied
                ));
            }
            if now.decided < before.decided {
                violations.push(format!(
                    "node {node}'s decided index went back from {} to {}",
                    before.decided, now.decided
                ));
            }
            if now.configuration_id < before.configuration_id {
                violations.push(format!(
                    "node {node} went back from configuration {} to {}",
                    before.configuration_id, now.configuration_id
                ));
            }
            // Compaction runs at the start of a tick, over what was applied
            // before it.
            let due = before.applied.min(before.decided).saturating_sub(self.retain_entries);
            if now.compacted_this_tick
                && now.configuration_id == before.configuration_id
                && due > now.base
                && now.compacted < due
            {
                violations.push(format!(
                    "node {node} keeps its log from {} though it applied through {} and keeps \
                     {} entries",
                    now.compacted, before.applied, self.retain_entries
                ));
            }
        }
        self.nodes.insert(node, Seen { progress: now, wiped: false });
        violations
    }

    /// `node` restarted; `wiped`: its half-installed state was discarded.
    pub fn restarted(&mut self, node: NodeId, wiped: bool) {
        if let Some(seen) = self.nodes.get_mut(&node) {
            seen.wiped |= wiped;
        }
    }

    /// `node` lost its power: its applied and decided indexes may go back
    /// to what it had synced (its configuration may not: a new one is
    /// stored with a synced write).
    pub fn power_cut(&mut self, node: NodeId) {
        if let Some(seen) = self.nodes.get_mut(&node) {
            seen.progress.applied = 0;
            seen.progress.decided = 0;
        }
    }

    /// `node` was deleted; a node that reuses its id starts afresh.
    pub fn deleted(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(applied: u64, decided: u64, compacted: u64) -> Progress {
        Progress {
            applied,
            decided,
            compacted,
            base: 0,
            configuration_id: 1,
            compacted_this_tick: false,
        }
    }

    #[test]
    fn progress_that_goes_back_is_caught() {
        let mut check = LogInvariants::new(10);
        assert!(check.observed(1, progress(5, 8, 0)).is_empty());
        let found = check.observed(1, progress(4, 7, 0));
        assert_eq!(found.len(), 2, "{found:?}");
        check.restarted(1, true);
        assert!(check.observed(1, progress(0, 8, 0)).is_empty(), "a wipe may start over");
        assert_eq!(check.observed(1, progress(0, 8, 9)).len(), 1, "compacted past decided");
        assert_eq!(check.observed(2, progress(0, 3, 5)).len(), 1, "past its own decided");
    }

    #[test]
    fn applying_what_nobody_decided_is_caught() {
        let mut check = LogInvariants::new(10);
        assert!(check.observed(1, progress(3, 3, 0)).is_empty());
        assert_eq!(check.observed(2, progress(4, 2, 0)).len(), 1);
    }

    #[test]
    fn a_log_left_long_after_a_compaction_is_caught() {
        let mut check = LogInvariants::new(10);
        assert!(check.observed(1, progress(50, 50, 0)).is_empty());
        let kept = Progress { compacted_this_tick: true, ..progress(52, 52, 40) };
        assert!(check.observed(1, kept).is_empty());
        let unbounded = Progress { compacted_this_tick: true, ..progress(60, 60, 40) };
        assert_eq!(check.observed(1, unbounded).len(), 1);
    }
}
