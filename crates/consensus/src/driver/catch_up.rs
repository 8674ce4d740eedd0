//! Catching up, both sides. A node whose next entries were compacted away
//! (OmniPaxos syncs a lagging follower with a compaction marker) first
//! applies what its own log still keeps, then asks a peer for the decided
//! entries after its state (one that has applied past the gap, else one that
//! decided the next entry), and when the peer compacted them too, for a
//! snapshot of its state machine: a RocksDB checkpoint streamed one
//! checksummed, bounded chunk per request and installed crash-safely. A
//! snapshot short of the gap's end is taken too when it is past this node's
//! state; entries fill the rest. A request without an answer is asked again,
//! of another peer when there is one. Why this always ends: `driver.rs`. The serving side answers from its log, or
//! from a checkpoint it keeps per requesting peer until the transfer goes
//! idle.

use cairn_storage::snapshot::Chunk;
use cairn_storage::{Command, SnapshotSink, SnapshotSource};

use super::{
    Blocked, Driver, Output, PeerMessage, SnapshotEvent, FETCH_ENTRIES_BYTES_MAX,
    FETCH_ENTRIES_MAX, SNAPSHOTS_SERVED_MAX,
};
use crate::replica::NodeId;
use crate::Error;

/// Filling a compacted gap from a peer.
pub(super) enum CatchUp {
    /// Waiting for decided entries after the applied index.
    Entries { peer: NodeId, asked_tick: u64 },
    /// Receiving a snapshot; `sink` is open once chunk 0 arrived.
    Snapshot {
        peer: NodeId,
        transfer: u64,
        next_chunk: u64,
        sink: Option<SnapshotSink>,
        asked_tick: u64,
    },
}

/// What became of a chunk pushed into a transfer.
enum Pushed {
    /// Written; the next chunk to ask for.
    Taken { next_chunk: u64 },
    /// Refused by the sink (out of order, corrupt): the transfer starts over.
    Refused(cairn_storage::Error),
}

/// A snapshot this node streams to a peer.
pub(super) struct Serving {
    transfer: u64,
    source: SnapshotSource,
    /// The chunk the peer asks for next.
    next_chunk: u64,
    /// The last chunk sent, encoded, to send again if it was lost.
    last_sent: Option<(u64, Vec<u8>)>,
    used_tick: u64,
}

impl Driver {
    // ---- Catching up (the side that lacks entries) ----

    /// Starts, re-asks or finishes catching up.
    pub(super) fn drive_catch_up(&mut self) -> Result<(), cairn_storage::Error> {
        let Some(Blocked::NeedsSnapshot { through_index }) = self.blocked else {
            return Ok(());
        };
        // What this node still keeps comes first, before every request to a
        // peer: a fetch can stop at a hole that the local log fills (seed
        // 470009449: a node asked its peers, for ever, for an entry it held).
        let fetching_entries = matches!(self.catch_up, None | Some(CatchUp::Entries { .. }));
        if fetching_entries && !self.install_begun {
            let before = self.sm.applied_index();
            if self.fill_gap_locally(through_index)? {
                self.caught_up();
                return Ok(());
            }
            if self.sm.applied_index() > before {
                // An answer to the request in flight would start too early.
                self.catch_up = None;
            }
        }
        let timeout = self.config.catch_up_timeout_ticks.max(1);
        match &mut self.catch_up {
            // A snapshot install began and broke off: the state here is
            // partial, and only a whole snapshot can mend it.
            None if self.install_begun => self.snapshot_from_any(through_index),
            None => self.ask_entries(None),
            Some(CatchUp::Entries { peer, asked_tick }) => {
                if self.now_ticks >= *asked_tick + timeout {
                    let previous = *peer;
                    self.ask_entries(Some(previous));
                }
            }
            Some(CatchUp::Snapshot { peer, transfer, next_chunk, asked_tick, .. }) => {
                if self.now_ticks >= *asked_tick + timeout {
                    *asked_tick = self.now_ticks;
                    let message =
                        PeerMessage::FetchSnapshot { transfer: *transfer, chunk: *next_chunk };
                    self.pending_messages.push((*peer, message));
                }
            }
        }
        Ok(())
    }

    /// A peer that may hold what fills the gap, other than `avoid` when
    /// there is a choice: one that has applied past the gap if any does (it
    /// has the entries, or a state to snapshot), else one that has decided
    /// the next entry this node needs (it keeps decided entries it has not
    /// applied); the leader first, then in turn.
    ///
    /// The second tier asks for the next entry, not the whole gap: the
    /// leader that decided an entry keeps it until it applies it, so the
    /// entry after the most advanced state is always somewhere, but no peer
    /// need have decided as far as this node's gap runs, nor applied past it
    /// (seed 470009449: three nodes each waited for a peer past its own gap,
    /// and none was).
    ///
    /// The turn runs over the whole tier, stepping past `avoid`: leaving
    /// `avoid` out of the list instead made the list rotate with the turn,
    /// and three peers that had only decided past the gap were asked in a
    /// cycle that never reached the one that had applied past it (seed
    /// 100007186).
    pub(super) fn catch_up_source(&mut self, avoid: Option<NodeId>) -> Option<NodeId> {
        let Some(Blocked::NeedsSnapshot { through_index }) = self.blocked else { return None };
        let me = self.replica.node_id();
        let leader = self.replica.leader();
        let tier = |has: &dyn Fn(&super::Hello) -> bool| -> Vec<NodeId> {
            let mut ids: Vec<NodeId> = self
                .hellos
                .iter()
                .filter(|(id, hello)| **id != me && has(hello))
                .map(|(id, _)| *id)
                .collect();
            ids.sort_by_key(|id| (Some(*id) != leader, *id));
            ids
        };
        let mut candidates = tier(&|hello| hello.applied_index >= through_index);
        if candidates.is_empty() {
            let next = self.sm.applied_index() + 1;
            candidates = tier(&|hello| hello.decided_index >= next);
        }
        if candidates.is_empty() {
            return None;
        }
        let mut pick = self.catch_up_turn as usize % candidates.len();
        self.catch_up_turn += 1;
        if candidates.len() > 1 && Some(candidates[pick]) == avoid {
            pick = (pick + 1) % candidates.len();
        }
        Some(candidates[pick])
    }

    /// Starts a snapshot transfer from a peer that has applied past the gap,
    /// taking them in turn; when none has, from one whose state is past this
    /// node's, which leaves less of the gap to fill.
    fn snapshot_from_any(&mut self, through_index: u64) {
        let me = self.replica.node_id();
        let applied = self.sm.applied_index();
        let past = |least: u64| -> Vec<NodeId> {
            self.hellos
                .iter()
                .filter(|(id, hello)| **id != me && hello.applied_index >= least)
                .map(|(id, _)| *id)
                .collect()
        };
        let mut sources = past(through_index);
        if sources.is_empty() {
            sources = past(applied + 1);
        }
        if sources.is_empty() {
            return;
        }
        let peer = sources[self.catch_up_turn as usize % sources.len()];
        self.catch_up_turn += 1;
        self.restart_snapshot(peer);
    }

    pub(super) fn ask_entries(&mut self, avoid: Option<NodeId>) {
        let Some(peer) = self.catch_up_source(avoid) else {
            self.catch_up = None;
            return;
        };
        let from = self.sm.applied_index() + 1;
        self.catch_up = Some(CatchUp::Entries { peer, asked_tick: self.now_ticks });
        self.pending_messages.push((peer, PeerMessage::FetchEntries { from }));
    }

    pub(super) fn entries_arrived(
        &mut self,
        peer: NodeId,
        from: u64,
        commands: Vec<Command>,
    ) -> Result<(), Error> {
        let expected = matches!(self.catch_up, Some(CatchUp::Entries { peer: p, .. }) if p == peer);
        if !expected || from != self.sm.applied_index() + 1 || commands.is_empty() {
            return Ok(());
        }
        let Some(Blocked::NeedsSnapshot { through_index }) = self.blocked else { return Ok(()) };
        let applied = self
            .apply_gap(from, commands, through_index)
            .and_then(|()| self.fill_gap_locally(through_index));
        if let Err(error) = applied {
            return Err(self.fail_now(error));
        }
        if self.sm.applied_index() >= through_index {
            self.catch_up = None;
            self.caught_up();
        } else {
            let from = self.sm.applied_index() + 1;
            self.catch_up = Some(CatchUp::Entries { peer, asked_tick: self.now_ticks });
            self.pending_messages.push((peer, PeerMessage::FetchEntries { from }));
        }
        Ok(())
    }

    /// Applies decided entries from `from` on, up to the end of the gap at
    /// `through_index` (what follows is in the local log), and answers the
    /// requests they settle. A storage fault is the caller's to fail on.
    fn apply_gap(
        &mut self,
        from: u64,
        commands: Vec<Command>,
        through_index: u64,
    ) -> Result<(), cairn_storage::Error> {
        let gap = (through_index + 1).saturating_sub(from);
        if gap == 0 || commands.is_empty() {
            return Ok(());
        }
        let count = commands.len().min(usize::try_from(gap).unwrap_or(usize::MAX));
        let entries: Vec<(u64, Command)> = commands
            .into_iter()
            .take(count)
            .enumerate()
            .map(|(i, c)| (from + i as u64, c))
            .collect();
        let mut out = Output::default();
        let applied = self.sm.apply(&entries)?;
        self.stats.entries_fetched += entries.len() as u64;
        // What is applied here is done with, whether the gap closes now or
        // later: the log may compact behind it.
        self.replica.caught_up_to(self.sm.applied_index());
        self.record_applied(&entries, &applied);
        for ((_, command), applied) in entries.iter().zip(applied) {
            self.answer(command, applied, &mut out);
        }
        self.deferred_answers.append(&mut out.answers);
        Ok(())
    }

    /// Fills the gap from entries this node still keeps below OmniPaxos's
    /// compacted index (retained because they were not applied yet), as far
    /// as they go. Answers whether the gap is closed.
    fn fill_gap_locally(&mut self, through_index: u64) -> Result<bool, cairn_storage::Error> {
        while self.sm.applied_index() < through_index {
            let from = self.sm.applied_index() + 1;
            let Some(commands) = self.replica.read_decided(from, FETCH_ENTRIES_MAX) else {
                break;
            };
            self.apply_gap(from, commands, through_index)?;
        }
        Ok(self.sm.applied_index() >= through_index)
    }

    pub(super) fn entries_unavailable(&mut self, peer: NodeId, from: u64) {
        let expected = matches!(self.catch_up, Some(CatchUp::Entries { peer: p, .. }) if p == peer);
        if !expected || from != self.sm.applied_index() + 1 {
            return;
        }
        let Some(Blocked::NeedsSnapshot { through_index }) = self.blocked else { return };
        let peer_applied = self.hellos.get(&peer).map_or(0, |h| h.applied_index);
        if peer_applied >= through_index {
            tracing::info!(peer, from, "the peer compacted the entries: fetching a snapshot");
            self.restart_snapshot(peer);
        } else if peer_applied >= from {
            // Its state is past ours though not past the gap: a snapshot of
            // it leaves less to fill, and nobody may hold the entries
            // between (it applied them and let them go).
            tracing::info!(
                peer,
                from,
                peer_applied,
                through_index,
                "the peer compacted the entries: fetching a snapshot of part of the gap"
            );
            self.restart_snapshot(peer);
        } else {
            // It has neither the entries nor a state past ours: another.
            self.ask_entries(Some(peer));
        }
    }

    pub(super) fn chunk_arrived(
        &mut self,
        peer: NodeId,
        transfer: u64,
        chunk_seq: u64,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let expected = matches!(&self.catch_up,
            Some(CatchUp::Snapshot { peer: p, transfer: t, next_chunk, .. })
                if *p == peer && *t == transfer && *next_chunk == chunk_seq);
        let Some(Blocked::NeedsSnapshot { through_index }) = self.blocked else { return Ok(()) };
        if !expected {
            return Ok(());
        }
        let chunk = match Chunk::decode(bytes) {
            Ok(chunk) => chunk,
            Err(error) => {
                tracing::warn!(peer, %error, "a snapshot chunk was refused: starting over");
                self.restart_snapshot(peer);
                return Ok(());
            }
        };
        let applied = self.sm.applied_index();
        // A snapshot short of the gap's end still moves this node forward;
        // one that does not is of no use.
        if chunk_seq == 0 && chunk.applied_index <= applied {
            tracing::warn!(
                peer,
                snapshot = chunk.applied_index,
                through_index,
                applied,
                "the peer's snapshot is not past this node's state: asking again"
            );
            self.catch_up = None;
            return Ok(());
        }
        let last = chunk.last;
        match self.push_chunk(chunk) {
            Ok(Pushed::Taken { next_chunk }) if !last => {
                let message = PeerMessage::FetchSnapshot { transfer, chunk: next_chunk };
                self.pending_messages.push((peer, message));
                Ok(())
            }
            Ok(Pushed::Taken { .. }) => self.finish_install(peer),
            Ok(Pushed::Refused(error)) => {
                tracing::warn!(peer, %error, "a snapshot chunk was refused: starting over");
                self.restart_snapshot(peer);
                Ok(())
            }
            Err(error) => Err(self.fail_now(error)),
        }
    }

    /// Writes `chunk` into the transfer in progress, opening the install on
    /// the first one. A storage fault is an error; a chunk the sink refuses
    /// (out of order, corrupt) is [`Pushed::Refused`].
    fn push_chunk(&mut self, chunk: Chunk) -> Result<Pushed, cairn_storage::Error> {
        let Some(CatchUp::Snapshot { sink, next_chunk, asked_tick, .. }) = &mut self.catch_up
        else {
            unreachable!("a chunk is pushed only into a snapshot transfer");
        };
        if sink.is_none() {
            *sink = Some(SnapshotSink::begin(self.sm.store(), chunk.applied_index)?);
            self.install_begun = true;
        }
        let open = sink.as_mut().expect("the sink is open");
        match open.push(chunk) {
            Ok(()) => {}
            Err(error @ cairn_storage::Error::Snapshot { .. }) => {
                return Ok(Pushed::Refused(error))
            }
            Err(error) => return Err(error),
        }
        *next_chunk += 1;
        *asked_tick = self.now_ticks;
        Ok(Pushed::Taken { next_chunk: *next_chunk })
    }

    /// The last chunk came: finishes the install, answers what the new
    /// state settles, and resumes after the snapshot's index.
    fn finish_install(&mut self, peer: NodeId) -> Result<(), Error> {
        let Some(CatchUp::Snapshot { sink: Some(sink), .. }) = self.catch_up.take() else {
            unreachable!("a snapshot transfer with an open sink");
        };
        let installed = sink.finish().and_then(|index| self.sm.reload().map(|()| index));
        let installed = installed.and_then(|index| {
            let mut out = Output::default();
            let settled = self.settle_from_state(&mut out);
            self.deferred_answers.append(&mut out.answers);
            settled.map(|()| index)
        });
        let index = installed.map_err(|error| self.fail_now(error))?;
        self.install_begun = false;
        self.stats.snapshots_installed += 1;
        let through_index = match self.blocked {
            Some(Blocked::NeedsSnapshot { through_index }) => through_index,
            _ => index,
        };
        let short_of_gap = index < through_index;
        tracing::info!(peer, index, through_index, "installed a snapshot from a peer");
        self.record_snapshot(|applied_index, state| SnapshotEvent::Installed {
            peer,
            applied_index,
            state,
            short_of_gap,
        });
        if short_of_gap {
            // The rest of the gap comes as entries (or another snapshot).
            self.replica.caught_up_to(self.sm.applied_index());
            return Ok(());
        }
        self.caught_up();
        Ok(())
    }

    pub(super) fn snapshot_unavailable(&mut self, peer: NodeId, transfer: u64, reason: &str) {
        let ours = matches!(&self.catch_up, Some(CatchUp::Snapshot { peer: p, transfer: t, .. }) if *p == peer && *t == transfer);
        if ours {
            tracing::warn!(peer, reason, "the peer cannot serve a snapshot: asking again later");
            // A half-installed snapshot stays marked incomplete until the
            // next transfer overwrites it.
            self.catch_up = None;
        }
    }

    /// Starts a new snapshot transfer from `peer` (also after a refused
    /// chunk).
    pub(super) fn restart_snapshot(&mut self, peer: NodeId) {
        let transfer = self.rng.next_u64();
        self.catch_up = Some(CatchUp::Snapshot {
            peer,
            transfer,
            next_chunk: 0,
            sink: None,
            asked_tick: self.now_ticks,
        });
        self.pending_messages.push((peer, PeerMessage::FetchSnapshot { transfer, chunk: 0 }));
    }

    /// The gap is filled: the replica resumes after the applied index.
    pub(super) fn caught_up(&mut self) {
        let applied = self.sm.applied_index();
        self.stats.gaps_filled += 1;
        tracing::info!(applied, "caught up from a peer");
        self.replica.caught_up_to(applied);
        self.blocked = None;
        self.catch_up = None;
    }

    pub(super) fn fail_now(&mut self, error: cairn_storage::Error) -> Error {
        let mut out = Output::default();
        let error = self.fail(error, &mut out);
        self.deferred_answers.append(&mut out.answers);
        error
    }

    // ---- Serving peers that catch up ----

    pub(super) fn serve_entries(&mut self, peer: NodeId, from: u64) {
        let message = match self.replica.read_decided(from, FETCH_ENTRIES_MAX) {
            Some(mut commands) => {
                let mut bytes = 0;
                let keep = commands
                    .iter()
                    .position(|command| {
                        bytes += command.encode().len();
                        bytes > FETCH_ENTRIES_BYTES_MAX
                    })
                    .unwrap_or(commands.len())
                    .max(1);
                commands.truncate(keep);
                PeerMessage::Entries { from, commands }
            }
            None => PeerMessage::EntriesUnavailable { from },
        };
        self.pending_messages.push((peer, message));
    }

    pub(super) fn serve_snapshot(&mut self, peer: NodeId, transfer: u64, chunk: u64) {
        let unavailable = |reason: String| PeerMessage::SnapshotUnavailable { transfer, reason };
        let current = self.serving.get(&peer).is_some_and(|s| s.transfer == transfer);
        if !current {
            if chunk != 0 {
                self.pending_messages.push((peer, unavailable(format!("no transfer {transfer}"))));
                return;
            }
            self.serving.remove(&peer);
            if self.serving.len() >= SNAPSHOTS_SERVED_MAX {
                let reason = format!("already serving {SNAPSHOTS_SERVED_MAX} snapshots");
                self.pending_messages.push((peer, unavailable(reason)));
                return;
            }
            if let Err(error) = std::fs::create_dir_all(&self.config.snapshot_dir) {
                self.pending_messages.push((peer, unavailable(error.to_string())));
                return;
            }
            let dir = self.config.snapshot_dir.join(format!("{peer}-{transfer:016x}"));
            let _ = std::fs::remove_dir_all(&dir);
            match SnapshotSource::create(self.sm.store(), &dir) {
                Ok(source) => {
                    self.stats.snapshots_served += 1;
                    tracing::info!(peer, applied = source.applied_index(), "serving a snapshot");
                    // Single-threaded: the store is as the checkpoint took it.
                    self.record_snapshot(|applied_index, state| SnapshotEvent::Served {
                        peer,
                        applied_index,
                        state,
                    });
                    let serving = Serving {
                        transfer,
                        source,
                        next_chunk: 0,
                        last_sent: None,
                        used_tick: self.now_ticks,
                    };
                    self.serving.insert(peer, serving);
                }
                Err(error) => {
                    self.pending_messages.push((peer, unavailable(error.to_string())));
                    return;
                }
            }
        }
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let serving = self.serving.get_mut(&peer).expect("serving this peer");
        serving.used_tick = self.now_ticks;
        let message = match &serving.last_sent {
            Some((seq, bytes)) if *seq == chunk => {
                PeerMessage::SnapshotChunk { transfer, chunk, bytes: bytes.clone() }
            }
            _ if chunk == serving.next_chunk => match serving.source.next_chunk(chunk_bytes) {
                Ok(Some(next)) => {
                    let bytes = next.encode();
                    serving.next_chunk += 1;
                    serving.last_sent = Some((chunk, bytes.clone()));
                    PeerMessage::SnapshotChunk { transfer, chunk, bytes }
                }
                Ok(None) => unavailable(format!("transfer {transfer} has no chunk {chunk}")),
                Err(error) => {
                    self.serving.remove(&peer);
                    unavailable(error.to_string())
                }
            },
            _ => unavailable(format!("chunk {chunk} is out of order")),
        };
        self.pending_messages.push((peer, message));
    }

    /// Drops the snapshots nobody asked for in a while (their checkpoints
    /// go with them).
    pub(super) fn expire_serving(&mut self) {
        let idle = self.config.catch_up_timeout_ticks.max(1) * 10;
        let now = self.now_ticks;
        self.serving.retain(|_, serving| now.saturating_sub(serving.used_tick) <= idle);
    }
}
