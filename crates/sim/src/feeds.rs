//! Checker: changefeeds miss nothing, repeat nothing and reorder nothing,
//! across nodes, crashes, snapshots and membership changes.
//!
//! Two parts:
//! - The reference history: after every poll, the simulator reads each
//!   node's change history on from where it last read that node, and
//!   records what every index changed (nothing, for most). Two nodes that
//!   record different changes at one index have diverged: a replica's
//!   history, from its own log or from a snapshot, must be every other's.
//! - Feeds: simulated clients that read the history page by page from a
//!   cursor, as a changefeed does, from one node and then another (when
//!   theirs goes down, or at random), with filters and small pages. Every
//!   page must be exactly the reference's changes between the cursor and
//!   where the page ends. A cursor a node no longer keeps history for is
//!   refused there ([`Expired`]); the feed tries another node, and starts
//!   over (as a client does with `include_initial`) only when no node has
//!   it. Restarts are counted, never a gap.

use std::collections::BTreeMap;

use cairn_consensus::replica::NodeId;
use cairn_storage::changes::{Change, Cursor, Expired, Filter, Limits, Subject};
use cairn_storage::fnv::Fnv1a;
use cairn_storage::Store;
use cairn_util::Rng;

/// A change, as compared: its position in its entry, a hash of it all, and
/// its subject (for filters).
type Digest = (u32, u64, Subject);

fn digest(change: &Change) -> Digest {
    (change.cursor.position, hash(change), change.subject.clone())
}

fn hash(change: &Change) -> u64 {
    let mut hash = Fnv1a::new();
    let mut feed = |bytes: &[u8]| {
        hash.write(&(bytes.len() as u64).to_be_bytes());
        hash.write(bytes);
    };
    match &change.subject {
        Subject::Doc { table, id } => {
            feed(b"doc");
            feed(table.as_bytes());
            feed(id.as_bytes());
        }
        Subject::TableDropped { table } => {
            feed(b"drop");
            feed(table.as_bytes());
        }
        Subject::Kv { key } => {
            feed(b"kv");
            feed(key.as_bytes());
        }
    }
    for value in [&change.old, &change.new] {
        match value {
            Some(bytes) => feed(bytes),
            None => feed(b"\xffnone"),
        }
    }
    hash.finish()
}

/// A simulated changefeed client.
struct Feed {
    filter: Filter,
    node: NodeId,
    cursor: Cursor,
    limits: Limits,
}

/// The reference history, the feeds, and what they found.
pub struct Feeds {
    /// What each index changed, as first read from any node.
    reference: BTreeMap<u64, Vec<Digest>>,
    /// Per node: the index through which its history was read.
    read_to: BTreeMap<NodeId, u64>,
    feeds: Vec<Feed>,
    rng: Rng,
    /// Feeds that had to start over: no node kept their cursor.
    pub restarts: u64,
    /// Pages read by feeds, and events they delivered.
    pub pages: u64,
    pub events: u64,
    /// Resumes of a feed on another node.
    pub moves: u64,
}

/// Reads without a bound: the reference wants whole ranges.
const UNBOUNDED: Limits = Limits { changes: usize::MAX, bytes: usize::MAX, scanned: usize::MAX };

impl Feeds {
    /// Feeds drawn from `seed` (apart from the run's schedule), starting on
    /// `nodes`, following keys among `keys`.
    pub fn new(seed: u64, nodes: &[NodeId], keys: usize) -> Feeds {
        let mut rng = Rng::new(seed ^ 0xFEED_0000_0000_0003);
        let count = 1 + rng.below(3) as usize;
        let feeds = (0..count)
            .map(|_| {
                let filter = match rng.below(3) {
                    0 => Filter::All,
                    1 => Filter::Kv { prefix: String::new() },
                    _ => Filter::Kv { prefix: crate::cluster::key_name(rng.below(keys as u64)) },
                };
                Feed {
                    filter,
                    node: nodes[rng.below(nodes.len() as u64) as usize],
                    cursor: Cursor::end_of(0),
                    limits: Limits {
                        changes: 1 + rng.below(4) as usize,
                        bytes: 1 + rng.below(256) as usize,
                        scanned: 1 + rng.below(6) as usize,
                    },
                }
            })
            .collect();
        Feeds {
            reference: BTreeMap::new(),
            read_to: BTreeMap::new(),
            feeds,
            rng,
            restarts: 0,
            pages: 0,
            events: 0,
            moves: 0,
        }
    }

    /// Reads `node`'s history on from where it was last read, into the
    /// reference; answers the violations it shows.
    pub fn observe(&mut self, node: NodeId, store: &Store) -> Vec<String> {
        let read = |from: u64| store.changes_after(Cursor::end_of(from), &Filter::All, UNBOUNDED);
        let mut from = self.read_to.get(&node).copied().unwrap_or(0);
        let page = match read(from) {
            // Trimmed (or replaced by a snapshot) before it was read: go
            // on from where the node's history begins.
            Ok(Err(Expired { first })) => {
                from = first - 1;
                read(from)
            }
            other => other,
        };
        let page = match page {
            Ok(Ok(page)) => page,
            Ok(Err(expired)) => {
                return vec![format!(
                    "node {node}: its history begins at {} yet refuses a cursor at index {from}",
                    expired.first
                )]
            }
            Err(error) => return vec![format!("node {node}: history unreadable: {error}")],
        };
        let mut violations = Vec::new();
        if page.applied_index <= from {
            // Behind what was read (a wiped state applying again), or idle.
            self.read_to.insert(node, page.applied_index.min(from));
            return violations;
        }
        if page.next != Cursor::end_of(page.applied_index) {
            violations.push(format!("node {node}: an unbounded read stopped at {}", page.next));
        }
        let mut by_index: BTreeMap<u64, Vec<Digest>> =
            (from + 1..=page.applied_index).map(|index| (index, Vec::new())).collect();
        for change in &page.changes {
            match by_index.get_mut(&change.cursor.index) {
                Some(digests) => digests.push(digest(change)),
                None => violations.push(format!(
                    "node {node}: a change at {} outside the range read ({from}, {}]",
                    change.cursor, page.applied_index
                )),
            }
        }
        for (index, digests) in by_index {
            if digests.iter().enumerate().any(|(i, (position, ..))| *position as usize != i) {
                violations.push(format!("node {node}: positions at index {index} skip"));
            }
            match self.reference.get(&index) {
                Some(known) if *known != digests => violations.push(format!(
                    "node {node} recorded other changes at index {index} than another node \
                     ({} against {})",
                    digests.len(),
                    known.len()
                )),
                Some(_) => {}
                None => {
                    self.reference.insert(index, digests);
                }
            }
        }
        self.read_to.insert(node, page.applied_index);
        violations
    }

    /// A turn of every feed: maybe move to another node, maybe read a page
    /// and check it. `stores` are the nodes that run now.
    pub fn turn(&mut self, stores: &BTreeMap<NodeId, Store>) -> Vec<String> {
        let mut violations = Vec::new();
        if stores.is_empty() {
            return violations;
        }
        let ids: Vec<NodeId> = stores.keys().copied().collect();
        for f in 0..self.feeds.len() {
            if !self.rng.chance(30) {
                continue;
            }
            let feed = &mut self.feeds[f];
            if !stores.contains_key(&feed.node) || self.rng.chance(5) {
                feed.node = ids[self.rng.below(ids.len() as u64) as usize];
                self.moves += 1;
            }
            let store = &stores[&feed.node];
            let read = match store.changes_after(feed.cursor, &feed.filter, feed.limits) {
                Ok(read) => read,
                Err(error) => {
                    violations.push(format!("node {}: history unreadable: {error}", feed.node));
                    continue;
                }
            };
            let page = match read {
                Ok(page) => page,
                Err(Expired { .. }) => {
                    // Another node may keep more; only when none does, start
                    // over where the node stands.
                    let elsewhere = ids.iter().find(|id| {
                        matches!(
                            stores[id].changes_after(feed.cursor, &feed.filter, feed.limits),
                            Ok(Ok(_))
                        )
                    });
                    match elsewhere {
                        Some(&id) => {
                            feed.node = id;
                            self.moves += 1;
                        }
                        None => {
                            feed.cursor = Cursor::end_of(store.applied_index());
                            self.restarts += 1;
                        }
                    }
                    continue;
                }
            };
            self.pages += 1;
            if page.next < feed.cursor {
                violations.push(format!(
                    "a feed on node {} went back from {} to {}",
                    feed.node, feed.cursor, page.next
                ));
                continue;
            }
            // What the reference holds between the cursor and the page's end.
            let mut wanted = Vec::new();
            for index in feed.cursor.index.max(1)..=page.next.index {
                let Some(digests) = self.reference.get(&index) else {
                    violations.push(format!(
                        "a feed on node {} read index {index}, which no node's history \
                         showed",
                        feed.node
                    ));
                    break;
                };
                for (position, hash, subject) in digests {
                    let cursor = Cursor::at(index, *position);
                    if cursor > feed.cursor && cursor <= page.next && feed.filter.admits(subject) {
                        wanted.push((cursor, *hash));
                    }
                }
            }
            let got: Vec<(Cursor, u64)> =
                page.changes.iter().map(|change| (change.cursor, hash(change))).collect();
            if got != wanted {
                violations.push(format!(
                    "a feed on node {} read after {} to {}: got {:?}, the history holds {:?}",
                    feed.node,
                    feed.cursor,
                    page.next,
                    got.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>(),
                    wanted.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>()
                ));
            }
            self.events += got.len() as u64;
            feed.cursor = page.next;
        }
        violations
    }
}
