//! Checker: no command takes effect twice on a node.
//!
//! Every entry a node applies comes with its command id and whether it took
//! effect (a repeat is answered from the session's memory instead). A command
//! id that takes effect twice on one node is a broken exactly-once promise:
//! a retry, a re-proposal or a duplicated message applied again.

use std::collections::BTreeMap;

use cairn_consensus::driver::AppliedEntry;
use cairn_consensus::replica::NodeId;
use cairn_storage::CommandId;

/// What took effect on each node, by command id, with its index.
#[derive(Default)]
pub struct ExactlyOnce {
    nodes: BTreeMap<NodeId, BTreeMap<CommandId, u64>>,
}

impl ExactlyOnce {
    /// Entries `node` applied; answers the violations they show.
    pub fn applied(&mut self, node: NodeId, entries: &[AppliedEntry]) -> Vec<String> {
        let seen = self.nodes.entry(node).or_default();
        let mut violations = Vec::new();
        for entry in entries {
            let (Some(command), true) = (entry.id, entry.fresh) else { continue };
            if let Some(before) = seen.insert(command, entry.index) {
                violations.push(format!(
                    "node {node} applied command {command:?} twice: at {before} and {}",
                    entry.index
                ));
            }
        }
        violations
    }

    /// `node`'s state now holds what was applied through `applied_index`
    /// only (a restart wiped a half-installed snapshot): what came later may
    /// take effect again.
    pub fn state_restored(&mut self, node: NodeId, applied_index: u64) {
        if let Some(seen) = self.nodes.get_mut(&node) {
            seen.retain(|_, index| *index <= applied_index);
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

    fn entry(index: u64, seq: u64, fresh: bool) -> AppliedEntry {
        AppliedEntry { index, id: Some(CommandId { session: 1, seq }), fresh, fingerprint: index }
    }

    #[test]
    fn a_command_taking_effect_twice_is_caught() {
        let mut check = ExactlyOnce::default();
        assert!(check.applied(1, &[entry(1, 1, true), entry(2, 1, false)]).is_empty());
        let found = check.applied(1, &[entry(3, 1, true)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("twice: at 1 and 3"));
    }

    #[test]
    fn nodes_are_checked_apart_and_a_wiped_state_may_apply_again() {
        let mut check = ExactlyOnce::default();
        assert!(check.applied(1, &[entry(1, 1, true), entry(2, 2, true)]).is_empty());
        assert!(check.applied(2, &[entry(1, 1, true)]).is_empty());
        check.state_restored(1, 1);
        assert!(check.applied(1, &[entry(2, 2, true)]).is_empty());
        assert_eq!(check.applied(1, &[entry(3, 1, true)]).len(), 1);
        check.deleted(1);
        assert!(check.applied(1, &[entry(3, 1, true)]).is_empty());
    }
}
