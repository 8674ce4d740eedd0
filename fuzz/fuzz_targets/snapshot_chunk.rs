//! Snapshot chunks, as a broken or hostile peer could send them to a node
//! that catches up: decoding never panics or allocates past its limits, and
//! round-trips; installing any sequence of chunks (resealed with a good
//! checksum, so the checks behind it are reached) never panics, and a store
//! whose install finished either opens as a state machine that reads and
//! applies, or is refused with an error.
//!
//! Input: a sequence of records `[flags, length (2 bytes, big-endian), chunk
//! bytes]`. Bit 0 of a record's flags keeps the chunk's own checksum instead
//! of resealing it.
#![no_main]

use cairn_storage::{Chunk, Command, Durability, Footprint, Op, SnapshotSink, StateMachine, Store};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut chunks = Vec::new();
    for (flags, bytes) in cairn_fuzz::records(data) {
        let Ok(chunk) = Chunk::decode(bytes) else { continue };
        let encoded = chunk.encode();
        assert_eq!(Chunk::decode(&encoded).expect("an encoded chunk decodes"), chunk);
        let chunk = if flags & 1 == 1 {
            chunk
        } else {
            Chunk::new(chunk.applied_index, chunk.seq, chunk.cf, chunk.pairs, chunk.last)
        };
        chunks.push(chunk);
    }
    let Some(first) = chunks.first() else { return };
    let applied_index = first.applied_index;
    let dir = cairn_fuzz::scratch_dir();
    let store = Store::open_with(dir.path(), Footprint::Small).expect("a store opens");
    store.set_durability(Durability::Unsynced);
    let mut sink = SnapshotSink::begin(&store, applied_index).expect("an install begins");
    for chunk in chunks {
        // A refused chunk writes nothing; the stream goes on, as a peer's
        // next chunk would.
        let _ = sink.push(chunk);
    }
    if sink.finish().is_err() {
        assert!(StateMachine::open(store).is_err(), "an unfinished install is never served");
        return;
    }
    let Ok(mut sm) = StateMachine::open(store.clone()) else { return };
    for table in store.list_tables().unwrap_or_default() {
        let _ = store.list_docs(&table, None, 10);
    }
    let next = sm.applied_index().saturating_add(1);
    let write = Command::new(None, Op::KvPut { key: "k".into(), value: b"v".to_vec() });
    let _ = sm.apply(&[(next, write)]);
});
