//! Peer messages, as an authenticated but broken or hostile peer could send
//! them: decoding never panics and round-trips, and a node that steps any
//! sequence of them (from members and from outsiders, with ticks and polls
//! between) never panics. The driver's own contract says so: "nothing a peer
//! sends can panic the driver".
//!
//! Input: a sequence of records `[action, length (2 bytes, big-endian),
//! message bytes]`. The action's low two bits pick the sender (2, 3, 4 = a
//! node outside the configuration, or 1 = the node itself); bit 2 ticks the
//! driver first; bit 3 makes the node propose a write first.
#![no_main]

use std::collections::BTreeMap;

use cairn_consensus::driver::{Driver, DriverConfig, Hello, Output, PeerMessage};
use cairn_consensus::replica::Timing;
use cairn_consensus::Membership;
use cairn_storage::{Command, CommandId, Durability, Footprint, Op, StateMachine, Store};
use libfuzzer_sys::fuzz_target;

fn node(dir: &std::path::Path) -> Driver {
    let store =
        Store::open_with(dir, Footprint::Small).expect("a store opens in an empty directory");
    store.set_durability(Durability::Unsynced);
    let members: BTreeMap<u64, std::net::SocketAddr> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", 7000 + id).parse().expect("an address")))
        .collect();
    let membership = Membership::new_cluster(members).expect("three members are valid");
    membership.begin(&store).expect("the membership is stored");
    let sm = StateMachine::open(store).expect("the state machine opens");
    let timing =
        Timing { election_timeout_ticks: 5, resend_timeout_ticks: 10, repropose_timeout_ticks: 15 };
    let me = Hello { api_address: "fuzz-1".into(), ..Hello::default() };
    let config = DriverConfig::new(1, membership, timing, 7, me, dir.join("snapshots"));
    Driver::open(config, sm).expect("the driver opens")
}

fuzz_target!(|data: &[u8]| {
    let mut decoded = Vec::new();
    for (action, bytes) in cairn_fuzz::records(data) {
        let Ok(message) = PeerMessage::decode(bytes) else { continue };
        // What decodes encodes, and decodes back to the same bytes.
        let encoded = message.encode().expect("a decoded message encodes");
        let again = PeerMessage::decode(&encoded).expect("an encoded message decodes");
        assert_eq!(again.encode().expect("encodes"), encoded, "a message survives encoding");
        decoded.push((action, message));
    }
    if decoded.is_empty() {
        return;
    }
    let dir = cairn_fuzz::scratch_dir();
    let mut driver = node(dir.path());
    let mut out = Output::default();
    for (request, (action, message)) in (1u64..).zip(decoded) {
        if action & 0b1000 != 0 {
            // A write names its exactly-once id (the driver's contract).
            let op = Op::KvPut { key: "k".into(), value: request.to_be_bytes().to_vec() };
            let id = CommandId { session: 1, seq: request };
            driver.propose(request, Command::new(Some(id), op), &mut out);
        }
        if action & 0b100 != 0 {
            driver.tick();
        }
        let from = [1, 2, 3, 4][usize::from(action & 0b11)];
        // An error stops the node (it is a state it cannot go on from); a
        // panic is a bug.
        if driver.step(from, message).is_err() || driver.poll(&mut out).is_err() {
            break;
        }
        out.messages.clear();
        out.answers.clear();
    }
});
