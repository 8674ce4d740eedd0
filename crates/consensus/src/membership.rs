//! Who replicates: the membership of a node's current configuration, stored
//! with its data.
//!
//! A [`Membership`] names the cluster (its id, carried in every peer
//! handshake), the configuration (its id, raised by every change), every
//! member's peer address, and the global log index the configuration's fresh
//! OmniPaxos log continues from. It is written when a replicated node first
//! starts on an empty directory, and again, with the log reset in the same
//! write, each time the node moves to a new configuration. A membership change
//! travels inside the StopSign that ends the old configuration (its metadata),
//! so every member of both configurations learns the same one.
//!
//! A membership of one member is a single node that used to be, or may become,
//! a cluster: its log is the local one.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use cairn_storage::Store;
use serde::{Deserialize, Serialize};

use crate::replica::{NodeId, MEMBERS_MAX, NODE_ID_MAX};

/// The members of one configuration and where they listen for peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Carried in every peer handshake: nodes of another cluster are refused.
    pub cluster_id: u64,
    /// Raised by every membership change.
    pub configuration_id: u32,
    /// Every member's peer address.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// The global log index just before this configuration's first entry.
    pub base_index: u64,
}

/// Why a membership cannot be used or reached.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(#[from] cairn_storage::Error),
}

impl Membership {
    /// The first configuration of a new cluster. Its id is a hash of the
    /// initial members, so every node started with the same members agrees
    /// on it without talking.
    pub fn new_cluster(
        members: BTreeMap<NodeId, SocketAddr>,
    ) -> Result<Membership, MembershipError> {
        let mut hash = cairn_storage::fnv::Fnv1a::new();
        for (id, addr) in &members {
            hash.write(format!("{id}={addr};").as_bytes());
        }
        let cluster_id = hash.finish().max(1);
        let membership = Membership { cluster_id, configuration_id: 1, members, base_index: 0 };
        membership.validate()?;
        Ok(membership)
    }

    /// The next configuration, with `members`, continuing after global index
    /// `base_index`.
    pub fn next(&self, members: BTreeMap<NodeId, SocketAddr>, base_index: u64) -> Membership {
        Membership {
            cluster_id: self.cluster_id,
            configuration_id: self.configuration_id + 1,
            members,
            base_index,
        }
    }

    /// Checks the member list: 1 to [`MEMBERS_MAX`] members with ids from 1
    /// to [`NODE_ID_MAX`].
    pub fn validate(&self) -> Result<(), MembershipError> {
        let count = self.members.len();
        if count == 0 || count > MEMBERS_MAX {
            return Err(MembershipError::Invalid(format!(
                "a configuration has 1 to {MEMBERS_MAX} members, not {count}"
            )));
        }
        if let Some(bad) = self.members.keys().find(|id| **id == 0 || **id > NODE_ID_MAX) {
            return Err(MembershipError::Invalid(format!(
                "node id {bad} is out of range: ids run from 1 to {NODE_ID_MAX}"
            )));
        }
        if self.configuration_id == 0 {
            return Err(MembershipError::Invalid("the configuration id must not be 0".into()));
        }
        Ok(())
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// Every member's address but `me`'s.
    pub fn peers_of(&self, me: NodeId) -> BTreeMap<NodeId, SocketAddr> {
        self.members.iter().filter(|(id, _)| **id != me).map(|(id, addr)| (*id, *addr)).collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a membership always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Membership, MembershipError> {
        let membership: Membership = serde_json::from_slice(bytes)
            .map_err(|e| MembershipError::Invalid(format!("a membership does not decode: {e}")))?;
        membership.validate()?;
        Ok(membership)
    }

    /// The membership stored with the node's data, if any (a node that never
    /// replicated has none).
    pub fn load(store: &Store) -> Result<Option<Membership>, MembershipError> {
        match store.cluster_config()? {
            Some(bytes) => Membership::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Stores this membership and starts its fresh log, in one synced write.
    pub fn begin(&self, store: &Store) -> Result<(), MembershipError> {
        Ok(store.begin_configuration(&self.encode())?)
    }
}
