//! Checker: replicas agree on the log and end in the same state.
//!
//! Every entry a node applies is compared with the entry applied at the same
//! index anywhere before it (by the fingerprint of its encoding): two
//! replicas that apply different commands at one index have diverged. At the
//! end of a run, every member's state machine must hash alike.

use std::collections::BTreeMap;

use cairn_consensus::driver::AppliedEntry;
use cairn_consensus::replica::NodeId;

/// The entry first applied at each index, and by whom.
#[derive(Default)]
pub struct Agreement {
    entries: BTreeMap<u64, (NodeId, u64)>,
}

impl Agreement {
    /// Entries `node` applied; answers the violations they show.
    pub fn applied(&mut self, node: NodeId, entries: &[AppliedEntry]) -> Vec<String> {
        let mut violations = Vec::new();
        for entry in entries {
            match self.entries.get(&entry.index) {
                Some((first, fingerprint)) if *fingerprint != entry.fingerprint => {
                    violations.push(format!(
                        "node {node} applied another entry at index {} than node {first}",
                        entry.index
                    ))
                }
                Some(_) => {}
                None => {
                    self.entries.insert(entry.index, (node, entry.fingerprint));
                }
            }
        }
        violations
    }

    /// Indexes applied somewhere so far.
    pub fn indexes(&self) -> usize {
        self.entries.len()
    }
}

/// The violation, if the members' state fingerprints differ.
pub fn same_state(states: &BTreeMap<NodeId, u64>) -> Option<String> {
    let first = states.values().next()?;
    states
        .values()
        .any(|state| state != first)
        .then(|| format!("replicas differ in state: {states:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, fingerprint: u64) -> AppliedEntry {
        AppliedEntry { index, id: None, fresh: true, fingerprint }
    }

    #[test]
    fn another_entry_at_an_index_is_caught() {
        let mut check = Agreement::default();
        assert!(check.applied(1, &[entry(1, 10), entry(2, 20)]).is_empty());
        assert!(check.applied(2, &[entry(1, 10)]).is_empty());
        let found = check.applied(3, &[entry(2, 21)]);
        assert_eq!(found, vec!["node 3 applied another entry at index 2 than node 1".to_string()]);
        assert_eq!(check.indexes(), 2);
    }

    #[test]
    fn states_must_match() {
        let same: BTreeMap<NodeId, u64> = [(1, 7), (2, 7)].into();
        assert_eq!(same_state(&same), None);
        let differ: BTreeMap<NodeId, u64> = [(1, 7), (2, 8)].into();
        assert!(same_state(&differ).is_some());
        assert_eq!(same_state(&BTreeMap::new()), None);
    }
}
