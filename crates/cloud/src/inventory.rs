//! The host inventory: every host the cloud made, with what it needs to bring
//! the host back after the cloud restarts. Kept in `<root>/inventory.json`,
//! replaced whole on every change.
//!
//! Invariants, checked when the file is loaded:
//! - names are unique and valid ([`check_name`]);
//! - numbers are unique and below `next_number`, so a number is never given
//!   twice, even after its host is deleted (a number fixes a host's ports, and
//!   a peer that still remembers an old host must not reach a new one there);
//! - a host's ports are the ones its number gives ([`Ports::for_number`]).
//!
//! This module does no process work and probes no ports: it is the record,
//! not the provider (see `local`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use cairn_util::files::{read_capped, write_atomic};

/// Longest host name, zone or host type: a DNS label, so the same names work
/// for container and pod providers.
pub const NAME_BYTES_MAX: usize = 63;
/// The file name of the inventory under the cloud's root.
pub const INVENTORY_FILE: &str = "inventory.json";
/// Largest inventory file read: far above any real one, small enough that a
/// stray file cannot exhaust memory.
const INVENTORY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Host `n` owns ports `base + PORTS_PER_HOST * (n - 1) + 1 ..= + 3`.
pub const PORTS_PER_HOST: u32 = 10;

/// The three loopback ports of a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    /// The node's client API.
    pub api: u16,
    /// The node's peer (consensus) transport.
    pub peer: u16,
    /// The agent's gRPC.
    pub agent: u16,
}

impl Ports {
    /// The ports of host `number` (from 1): `None` when they do not fit
    /// below 65536.
    pub fn for_number(base_port: u16, number: u32) -> Option<Ports> {
        assert!(number >= 1, "host numbers start at 1");
        let first = u32::from(base_port)
            .checked_add(PORTS_PER_HOST.checked_mul(number - 1)?)?
            .checked_add(1)?;
        let port = |offset: u32| u16::try_from(first + offset).ok();
        Some(Ports { api: port(0)?, peer: port(1)?, agent: port(2)? })
    }

    /// The addresses on loopback, for the agent's flags and the API.
    pub fn addresses(&self) -> [SocketAddr; 3] {
        let at = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        [at(self.api), at(self.peer), at(self.agent)]
    }
}

/// Where a host is in its life, as far as the inventory remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Its agent should run: it is (re)started whenever it is not.
    Active,
    /// The machine was made to die: nothing of it runs or is restarted.
    Failed,
    /// Being deleted; a cloud that restarts finishes the deletion.
    Deleting,
}

/// One host, as kept in the inventory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    pub name: String,
    pub number: u32,
    pub zone: String,
    pub host_type: String,
    pub ports: Ports,
    pub lifecycle: Lifecycle,
    pub created_ms: u64,
    /// The agent this cloud started, while it runs. Kept on disk only so a
    /// cloud that died without stopping its agents can find them.
    #[serde(default)]
    pub agent_pid: Option<u32>,
}

/// Every host, by name, and the next number to give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    pub hosts: BTreeMap<String, HostRecord>,
    pub next_number: u32,
}

/// The file's shape: hosts in number order, for people reading it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    next_number: u32,
    hosts: Vec<HostRecord>,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory { hosts: BTreeMap::new(), next_number: 1 }
    }
}

impl Inventory {
    /// Where the inventory of the cloud rooted at `root` lives.
    pub fn path(root: &Path) -> PathBuf {
        root.join(INVENTORY_FILE)
    }

    /// Loads the inventory; an empty one when the file does not exist yet.
    pub fn load(path: &Path, base_port: u16) -> Result<Inventory, Error> {
        let bytes = read_capped(path, INVENTORY_BYTES_MAX)
            .map_err(|e| Error::io("cannot read the inventory", path, e))?;
        let Some(bytes) = bytes else { return Ok(Inventory::default()) };
        let invalid = |message: String| Error::InventoryInvalid { path: path.into(), message };
        let file: InventoryFile =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if file.next_number == 0 {
            return Err(invalid("next_number is 0; host numbers start at 1".into()));
        }
        let mut inventory = Inventory { hosts: BTreeMap::new(), next_number: file.next_number };
        let mut numbers = BTreeMap::new();
        for host in file.hosts {
            check_name("host name", &host.name).map_err(|e| invalid(e.to_string()))?;
            if host.number == 0 || host.number >= inventory.next_number {
                return Err(invalid(format!(
                    "host {} has number {}, outside 1..{} (next_number)",
                    host.name, host.number, inventory.next_number
                )));
            }
            if let Some(other) = numbers.insert(host.number, host.name.clone()) {
                return Err(invalid(format!(
                    "hosts {other} and {} share number {}",
                    host.name, host.number
                )));
            }
            if Ports::for_number(base_port, host.number) != Some(host.ports) {
                // A host's node stores its peer address: moving it would cut it
                // off from its peers, so a different --base-port is refused.
                return Err(invalid(format!(
                    "host {} has ports {:?}, not those of number {} from base port {base_port} \
                     (was the cloud started with another base port?)",
                    host.name, host.ports, host.number
                )));
            }
            if inventory.hosts.insert(host.name.clone(), host).is_some() {
                return Err(invalid("two hosts share a name".into()));
            }
        }
        Ok(inventory)
    }

    /// Replaces the inventory file with this inventory.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let mut hosts: Vec<HostRecord> = self.hosts.values().cloned().collect();
        hosts.sort_by_key(|host| host.number);
        let file = InventoryFile { next_number: self.next_number, hosts };
        let mut bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::io("cannot encode the inventory", path, e.into()))?;
        bytes.push(b'\n');
        write_atomic(path, &bytes).map_err(|e| Error::io("cannot write the inventory", path, e))
    }
}

/// Checks a host name, zone or host type: 1 to 63 of `a-z`, `0-9` and `-`,
/// not starting or ending with `-` (a DNS label; and a leading `-` would read
/// as a flag on the agent's command line).
pub fn check_name(what: &'static str, value: &str) -> Result<(), Error> {
    let rule = "1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'";
    let fits = !value.is_empty()
        && value.len() <= NAME_BYTES_MAX
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if fits {
        Ok(())
    } else {
        Err(Error::BadName { what, value: value.to_string(), rule })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host 1 of base 7000 serves its API on 7001; each host takes ten ports.
    #[test]
    fn ports_follow_the_number() {
        let one = Ports::for_number(7000, 1).expect("fits");
        assert_eq!(one, Ports { api: 7001, peer: 7002, agent: 7003 });
        let three = Ports::for_number(7000, 3).expect("fits");
        assert_eq!(three, Ports { api: 7021, peer: 7022, agent: 7023 });
        assert_eq!(
            Ports::for_number(65_530, 1),
            Some(Ports { api: 65_531, peer: 65_532, agent: 65_533 })
        );
        assert_eq!(Ports::for_number(65_533, 1), None);
        assert_eq!(Ports::for_number(60_000, 1_000), None);
        assert_eq!(Ports::for_number(1, u32::MAX), None);
    }

    #[test]
    fn names() {
        for good in ["host-3", "a", "zone-b", "0", &"x".repeat(63)] {
            assert!(check_name("name", good).is_ok(), "{good}");
        }
        for bad in ["", "Host", "-x", "x-", "a_b", "a.b", "a b", &"x".repeat(64)] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
        }
    }

    fn record(name: &str, number: u32) -> HostRecord {
        HostRecord {
            name: name.into(),
            number,
            zone: "zone-a".into(),
            host_type: "small".into(),
            ports: Ports::for_number(7000, number).expect("fits"),
            lifecycle: Lifecycle::Active,
            created_ms: 1,
            agent_pid: None,
        }
    }

    /// What is saved loads back the same; a missing file is an empty inventory.
    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = Inventory::path(dir.path());
        assert_eq!(Inventory::load(&path, 7000).expect("missing"), Inventory::default());
        let mut inventory = Inventory { next_number: 5, ..Inventory::default() };
        for (name, number) in [("host-4", 4), ("host-1", 1)] {
            inventory.hosts.insert(name.into(), record(name, number));
        }
        inventory.save(&path).expect("save");
        assert_eq!(Inventory::load(&path, 7000).expect("load"), inventory);
    }

    /// A number at or above next_number, or ports of another base, are refused.
    #[test]
    fn load_refuses_inconsistent_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = Inventory::path(dir.path());
        let mut inventory = Inventory { next_number: 2, ..Inventory::default() };
        inventory.hosts.insert("host-2".into(), record("host-2", 2));
        inventory.save(&path).expect("save");
        assert!(matches!(Inventory::load(&path, 7000), Err(Error::InventoryInvalid { .. })));
        inventory.next_number = 3;
        inventory.save(&path).expect("save");
        assert!(Inventory::load(&path, 7000).is_ok());
        assert!(matches!(Inventory::load(&path, 8000), Err(Error::InventoryInvalid { .. })));
    }
}
