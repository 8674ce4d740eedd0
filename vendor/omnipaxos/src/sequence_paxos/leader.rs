use super::super::{
    ballot_leader_election::Ballot,
    util::{LeaderState, PromiseMetaData},
};
use crate::util::{AcceptedMetaData, WRITE_ERROR_MSG};

use super::*;

impl<T, B> SequencePaxos<T, B>
where
    T: Entry,
    B: Storage<T>,
{
    /// Handle a new leader. Should be called when the leader election has elected a new leader with the ballot `n`
    /*** Leader ***/
    pub(crate) fn handle_leader(&mut self, n: Ballot) {
        if n <= self.leader_state.n_leader || n <= self.internal_storage.get_promise() {
            return;
        }
        #[cfg(feature = "logging")]
        debug!(self.logger, "Newly elected leader: {:?}", n);
        if self.pid == n.pid {
            self.leader_state =
                LeaderState::with(n, self.leader_state.max_pid, self.leader_state.quorum);
            // Flush any pending writes
            // Don't have to handle flushed entries here because we will sync with followers
            let _ = self.internal_storage.flush_batch().expect(WRITE_ERROR_MSG);
            self.internal_storage.set_promise(n).expect(WRITE_ERROR_MSG);
            /* insert my promise */
            let na = self.internal_storage.get_accepted_round();
            let decided_idx = self.get_decided_idx();
            let accepted_idx = self.internal_storage.get_accepted_idx();
            let my_promise = Promise {
                n,
                n_accepted: na,
                decided_idx,
                accepted_idx,
                log_sync: None,
            };
            self.leader_state.set_promise(my_promise, self.pid, true);
            /* initialise longest chosen sequence and update state */
            self.state = (Role::Leader, Phase::Prepare);
            let prep = Prepare {
                n,
                decided_idx,
                n_accepted: na,
                accepted_idx,
            };
            /* send prepare */
            for pid in &self.peers {
                self.outgoing.push(Message::SequencePaxos(PaxosMessage {
                    from: self.pid,
                    to: *pid,
                    msg: PaxosMsg::Prepare(prep),
                }));
            }
        } else {
            self.become_follower();
        }
    }

    pub(crate) fn become_follower(&mut self) {
        self.state.0 = Role::Follower;
    }

    pub(crate) fn handle_preparereq(&mut self, prepreq: PrepareReq, from: NodeId) {
        #[cfg(feature = "logging")]
        debug!(self.logger, "Incoming message PrepareReq from {}", from);
        if self.state.0 == Role::Leader && prepreq.n <= self.leader_state.n_leader {
            self.leader_state.reset_promise(from);
            self.leader_state.set_latest_accept_meta(from, None);
            self.send_prepare(from);
        }
    }

    pub(crate) fn handle_forwarded_proposal(&mut self, mut entries: Vec<T>) {
        if !self.accepted_reconfiguration() {
            match self.state {
                (Role::Leader, Phase::Prepare) => self.buffered_proposals.append(&mut entries),
                (Role::Leader, Phase::Accept) => {
                    // Cairn patch 4 (PATCHES.md): what does not fit is
                    // dropped; its proposer proposes it again.
                    let admitted = self.leader_admits(&entries);
                    entries.truncate(admitted);
                    if !entries.is_empty() {
                        self.accept_entries_leader(entries);
                    }
                }
                _ => self.forward_proposals(entries),
            }
        }
    }

    /// Cairn patch 4 (PATCHES.md): how many of `entries`, from the first, this
    /// leader takes now. A leader keeps the bytes of its entries past its
    /// decided index within `message_entries_bytes_max`, so that what a log
    /// sync carries whole stays within one message while decided indexes are
    /// current; with none undecided it takes one entry, whatever its size.
    pub(crate) fn leader_admits(&mut self, entries: &[T]) -> usize {
        let max = self.message_entries_bytes_max;
        if max == usize::MAX {
            return entries.len();
        }
        let decided_idx = self.internal_storage.get_decided_idx();
        while let Some(&(end, bytes)) = self.undecided.front() {
            if end > decided_idx {
                break;
            }
            self.undecided.pop_front();
            self.undecided_bytes -= bytes;
        }
        let mut held = self.undecided_bytes;
        let mut empty = self.undecided.is_empty();
        let mut admitted = 0;
        for entry in entries {
            let bytes = entry.message_bytes();
            if !empty && held.saturating_add(bytes) > max {
                break;
            }
            held = held.saturating_add(bytes);
            empty = false;
            admitted += 1;
        }
        admitted
    }

    /// Cairn patch 4 (PATCHES.md): counts the entries of this leader's log
    /// past its decided index afresh, as it begins to accept.
    fn count_undecided(&mut self) {
        self.undecided.clear();
        self.undecided_bytes = 0;
        if self.message_entries_bytes_max == usize::MAX {
            return;
        }
        let decided_idx = self.internal_storage.get_decided_idx();
        let suffix = self
            .internal_storage
            .get_suffix(decided_idx)
            .expect(READ_ERROR_MSG);
        if !suffix.is_empty() {
            let bytes = suffix
                .iter()
                .fold(0usize, |sum, entry| sum.saturating_add(entry.message_bytes()));
            self.undecided.push_back((decided_idx + suffix.len(), bytes));
            self.undecided_bytes = bytes;
        }
    }

    pub(crate) fn handle_forwarded_stopsign(&mut self, ss: StopSign) {
        if self.accepted_reconfiguration() {
            return;
        }
        match self.state {
            (Role::Leader, Phase::Prepare) => self.buffered_stopsign = Some(ss),
            (Role::Leader, Phase::Accept) => self.accept_stopsign_leader(ss),
            _ => self.forward_stopsign(ss),
        }
    }

    pub(crate) fn send_prepare(&mut self, to: NodeId) {
        let prep = Prepare {
            n: self.leader_state.n_leader,
            decided_idx: self.internal_storage.get_decided_idx(),
            n_accepted: self.internal_storage.get_accepted_round(),
            accepted_idx: self.internal_storage.get_accepted_idx(),
        };
        self.outgoing.push(Message::SequencePaxos(PaxosMessage {
            from: self.pid,
            to,
            msg: PaxosMsg::Prepare(prep),
        }));
    }

    pub(crate) fn accept_entry_leader(&mut self, entry: T) {
        let accepted_metadata = self
            .internal_storage
            .append_entry_with_batching(entry)
            .expect(WRITE_ERROR_MSG);
        if let Some(metadata) = accepted_metadata {
            self.leader_state
                .set_accepted_idx(self.pid, metadata.accepted_idx);
            self.send_acceptdecide(metadata);
        }
    }

    pub(crate) fn accept_entries_leader(&mut self, entries: Vec<T>) {
        let accepted_metadata = self
            .internal_storage
            .append_entries_with_batching(entries)
            .expect(WRITE_ERROR_MSG);
        if let Some(metadata) = accepted_metadata {
            self.leader_state
                .set_accepted_idx(self.pid, metadata.accepted_idx);
            self.send_acceptdecide(metadata);
        }
    }

    pub(crate) fn accept_stopsign_leader(&mut self, ss: StopSign) {
        let accepted_metadata = self
            .internal_storage
            .append_stopsign(ss.clone())
            .expect(WRITE_ERROR_MSG);
        if let Some(metadata) = accepted_metadata {
            self.send_acceptdecide(metadata);
        }
        let accepted_idx = self.internal_storage.get_accepted_idx();
        self.leader_state.set_accepted_idx(self.pid, accepted_idx);
        for pid in self.leader_state.get_promised_followers() {
            self.send_accept_stopsign(pid, ss.clone(), false);
        }
    }

    fn send_accsync(&mut self, to: NodeId) {
        let current_n = self.leader_state.n_leader;
        let PromiseMetaData {
            n_accepted: prev_round_max_promise_n,
            accepted_idx: prev_round_max_accepted_idx,
            ..
        } = &self.leader_state.get_max_promise_meta();
        let PromiseMetaData {
            n_accepted: followers_promise_n,
            accepted_idx: followers_accepted_idx,
            pid,
            ..
        } = self.leader_state.get_promise_meta(to);
        let followers_decided_idx = self
            .leader_state
            .get_decided_idx(*pid)
            .expect("Received PromiseMetaData but not found in ld");
        // Follower can have valid accepted entries depending on which leader they were previously following
        let followers_valid_entries_idx = if *followers_promise_n == current_n {
            *followers_accepted_idx
        } else if *followers_promise_n == *prev_round_max_promise_n {
            *prev_round_max_accepted_idx.min(followers_accepted_idx)
        } else {
            followers_decided_idx
        };
        let mut log_sync =
            self.create_log_sync(followers_valid_entries_idx, followers_decided_idx);
        // Cairn patch 5 (PATCHES.md): a suffix over the byte budget goes in
        // runs: the first in the AcceptSync, the rest in AcceptDecides with
        // the next sequence numbers, as accepts that came later. The sync's
        // decided index then stops where its entries do. With a StopSign,
        // which must follow the whole suffix, the sync goes whole.
        let mut rest = vec![];
        let mut decided_idx = self.get_decided_idx();
        if log_sync.stopsign.is_none() && self.message_entries_bytes_max != usize::MAX {
            let mut runs = split_by_bytes(
                std::mem::take(&mut log_sync.suffix),
                self.message_entries_bytes_max,
            )
            .into_iter();
            log_sync.suffix = runs.next().unwrap_or_default();
            rest = runs.collect::<Vec<_>>();
            if !rest.is_empty() {
                decided_idx = decided_idx.min(log_sync.sync_idx + log_sync.suffix.len());
            }
        }
        self.leader_state.increment_seq_num_session(to);
        let acc_sync = AcceptSync {
            n: current_n,
            seq_num: self.leader_state.next_seq_num(to),
            decided_idx,
            log_sync,
            #[cfg(feature = "unicache")]
            unicache: self.internal_storage.get_unicache(),
        };
        let msg = Message::SequencePaxos(PaxosMessage {
            from: self.pid,
            to,
            msg: PaxosMsg::AcceptSync(acc_sync),
        });
        self.outgoing.push(msg);
        let decided_idx = self.get_decided_idx();
        for entries in rest {
            let bytes = entries
                .iter()
                .fold(0usize, |sum, entry| sum.saturating_add(entry.message_bytes()));
            self.leader_state
                .set_latest_accept_meta(to, Some(self.outgoing.len()));
            self.leader_state.add_latest_accept_bytes(to, bytes);
            let acc = AcceptDecide {
                n: current_n,
                seq_num: self.leader_state.next_seq_num(to),
                decided_idx,
                entries,
            };
            self.outgoing.push(Message::SequencePaxos(PaxosMessage {
                from: self.pid,
                to,
                msg: PaxosMsg::AcceptDecide(acc),
            }));
        }
    }

    fn send_acceptdecide(&mut self, accepted: AcceptedMetaData<T>) {
        let decided_idx = self.internal_storage.get_decided_idx();
        // Cairn patch 3 (PATCHES.md): entries go into a follower's latest
        // AcceptDecide while its entries stay within the byte budget; past
        // it, into a new AcceptDecide with the next sequence number, as if
        // they had been accepted in a later round of messages. One entry
        // always goes.
        let max = self.message_entries_bytes_max;
        let sizes: Vec<usize> = if max == usize::MAX {
            vec![0; accepted.entries.len()]
        } else {
            accepted.entries.iter().map(Entry::message_bytes).collect()
        };
        // Cairn patch 4 (PATCHES.md): every entry a leader accepts passes
        // here; count it undecided.
        if max != usize::MAX && !accepted.entries.is_empty() {
            let bytes = sizes.iter().fold(0usize, |sum, size| sum.saturating_add(*size));
            self.undecided.push_back((accepted.accepted_idx, bytes));
            self.undecided_bytes = self.undecided_bytes.saturating_add(bytes);
        }
        for pid in self.leader_state.get_promised_followers() {
            let mut start = 0;
            loop {
                let held = self.leader_state.get_latest_accept_bytes(pid);
                let mut end = start;
                let mut bytes = 0usize;
                while end < sizes.len() && held.saturating_add(bytes + sizes[end]) <= max {
                    bytes += sizes[end];
                    end += 1;
                }
                let latest_accdec = self.get_latest_accdec_message(pid);
                match latest_accdec {
                    // Modify existing AcceptDecide message to follower
                    Some(accdec) if end > start || start == sizes.len() => {
                        accdec
                            .entries
                            .extend(accepted.entries[start..end].iter().cloned());
                        accdec.decided_idx = decided_idx;
                        self.leader_state.add_latest_accept_bytes(pid, bytes);
                    }
                    // Add new AcceptDecide message to follower
                    _ => {
                        // A fresh message holds at least one entry.
                        if end == start && end < sizes.len() {
                            bytes = sizes[end];
                            end += 1;
                        }
                        self.leader_state
                            .set_latest_accept_meta(pid, Some(self.outgoing.len()));
                        self.leader_state.add_latest_accept_bytes(pid, bytes);
                        let acc = AcceptDecide {
                            n: self.leader_state.n_leader,
                            seq_num: self.leader_state.next_seq_num(pid),
                            decided_idx,
                            entries: accepted.entries[start..end].to_vec(),
                        };
                        self.outgoing.push(Message::SequencePaxos(PaxosMessage {
                            from: self.pid,
                            to: pid,
                            msg: PaxosMsg::AcceptDecide(acc),
                        }));
                    }
                }
                start = end;
                if start == sizes.len() {
                    break;
                }
            }
        }
    }

    fn send_accept_stopsign(&mut self, to: NodeId, ss: StopSign, resend: bool) {
        let seq_num = match resend {
            true => self.leader_state.get_seq_num(to),
            false => self.leader_state.next_seq_num(to),
        };
        let acc_ss = PaxosMsg::AcceptStopSign(AcceptStopSign {
            seq_num,
            n: self.leader_state.n_leader,
            ss,
        });
        self.outgoing.push(Message::SequencePaxos(PaxosMessage {
            from: self.pid,
            to,
            msg: acc_ss,
        }));
    }

    pub(crate) fn send_decide(&mut self, to: NodeId, decided_idx: usize, resend: bool) {
        let seq_num = match resend {
            true => self.leader_state.get_seq_num(to),
            false => self.leader_state.next_seq_num(to),
        };
        let d = Decide {
            n: self.leader_state.n_leader,
            seq_num,
            decided_idx,
        };
        self.outgoing.push(Message::SequencePaxos(PaxosMessage {
            from: self.pid,
            to,
            msg: PaxosMsg::Decide(d),
        }));
    }

    fn handle_majority_promises(&mut self) {
        let max_promise_sync = self.leader_state.take_max_promise_sync();
        let decided_idx = self.leader_state.get_max_decided_idx();
        let mut new_accepted_idx = self
            .internal_storage
            .sync_log(self.leader_state.n_leader, decided_idx, max_promise_sync)
            .expect(WRITE_ERROR_MSG);
        self.count_undecided();
        if !self.accepted_reconfiguration() {
            if !self.buffered_proposals.is_empty() {
                let mut entries = std::mem::take(&mut self.buffered_proposals);
                // Cairn patch 4 (PATCHES.md): what does not fit is dropped;
                // its proposer proposes it again.
                let admitted = self.leader_admits(&entries);
                entries.truncate(admitted);
                new_accepted_idx = self
                    .internal_storage
                    .append_entries_without_batching(entries)
                    .expect(WRITE_ERROR_MSG);
            }
            if let Some(ss) = self.buffered_stopsign.take() {
                self.internal_storage
                    .append_stopsign(ss)
                    .expect(WRITE_ERROR_MSG);
                new_accepted_idx = self.internal_storage.get_accepted_idx();
            }
        }
        self.count_undecided();
        self.state = (Role::Leader, Phase::Accept);
        self.leader_state
            .set_accepted_idx(self.pid, new_accepted_idx);
        for pid in self.leader_state.get_promised_followers() {
            self.send_accsync(pid);
        }
    }

    pub(crate) fn handle_promise_prepare(&mut self, prom: Promise<T>, from: NodeId) {
        #[cfg(feature = "logging")]
        debug!(
            self.logger,
            "Handling promise from {} in Prepare phase", from
        );
        if prom.n == self.leader_state.n_leader {
            let received_majority = self.leader_state.set_promise(prom, from, true);
            if received_majority {
                self.handle_majority_promises();
            }
        }
    }

    pub(crate) fn handle_promise_accept(&mut self, prom: Promise<T>, from: NodeId) {
        #[cfg(feature = "logging")]
        {
            let (r, p) = &self.state;
            debug!(
                self.logger,
                "Self role {:?}, phase {:?}. Incoming message Promise Accept from {}", r, p, from
            );
        }
        if prom.n == self.leader_state.n_leader {
            self.leader_state.set_promise(prom, from, false);
            self.send_accsync(from);
        }
    }

    pub(crate) fn handle_accepted(&mut self, accepted: Accepted, from: NodeId) {
        #[cfg(feature = "logging")]
        trace!(
            self.logger,
            "Got Accepted from {}, idx: {}, chosen_idx: {}, accepted: {:?}",
            from,
            accepted.accepted_idx,
            self.internal_storage.get_decided_idx(),
            self.leader_state.accepted_indexes
        );
        if accepted.n == self.leader_state.n_leader && self.state == (Role::Leader, Phase::Accept) {
            self.leader_state
                .set_accepted_idx(from, accepted.accepted_idx);
            if accepted.accepted_idx > self.internal_storage.get_decided_idx()
                && self.leader_state.is_chosen(accepted.accepted_idx)
            {
                let decided_idx = accepted.accepted_idx;
                self.internal_storage
                    .set_decided_idx(decided_idx)
                    .expect(WRITE_ERROR_MSG);
                for pid in self.leader_state.get_promised_followers() {
                    let latest_accdec = self.get_latest_accdec_message(pid);
                    match latest_accdec {
                        Some(accdec) => accdec.decided_idx = decided_idx,
                        None => self.send_decide(pid, decided_idx, false),
                    }
                }
            }
        }
    }

    fn get_latest_accdec_message(&mut self, to: NodeId) -> Option<&mut AcceptDecide<T>> {
        if let Some((bal, outgoing_idx)) = self.leader_state.get_latest_accept_meta(to) {
            if bal == self.leader_state.n_leader {
                if let Message::SequencePaxos(PaxosMessage {
                    msg: PaxosMsg::AcceptDecide(accdec),
                    ..
                }) = self.outgoing.get_mut(outgoing_idx).unwrap()
                {
                    return Some(accdec);
                } else {
                    #[cfg(feature = "logging")]
                    debug!(self.logger, "Cached idx is not an AcceptedDecide!");
                }
            }
        }
        None
    }

    pub(crate) fn handle_notaccepted(&mut self, not_acc: NotAccepted, from: NodeId) {
        if self.state.0 == Role::Leader && self.leader_state.n_leader < not_acc.n {
            self.leader_state.lost_promise(from);
        }
    }

    pub(crate) fn resend_messages_leader(&mut self) {
        match self.state.1 {
            Phase::Prepare => {
                // Resend Prepare
                let preparable_peers = self.leader_state.get_preparable_peers(&self.peers);
                for peer in preparable_peers {
                    self.send_prepare(peer);
                }
            }
            Phase::Accept => {
                // Resend AcceptStopSign or StopSign's decide
                if let Some(ss) = self.internal_storage.get_stopsign() {
                    let decided_idx = self.internal_storage.get_decided_idx();
                    for follower in self.leader_state.get_promised_followers() {
                        if self.internal_storage.stopsign_is_decided() {
                            self.send_decide(follower, decided_idx, true);
                        } else if self.leader_state.get_accepted_idx(follower)
                            != self.internal_storage.get_accepted_idx()
                        {
                            self.send_accept_stopsign(follower, ss.clone(), true);
                        }
                    }
                }
                self.probe_stalled_followers();
                // Resend Prepare
                let preparable_peers = self.leader_state.get_preparable_peers(&self.peers);
                for peer in preparable_peers {
                    self.send_prepare(peer);
                }
            }
            Phase::Recover => (),
            Phase::None => (),
        }
    }

    /// Cairn patch 4 (PATCHES.md): a follower behind this leader whose
    /// accepted index did not move since the last resend may have lost an
    /// accept, or the leader its answer. Only a later accept would show
    /// either, and a leader whose undecided entries fill their budget sends
    /// none. So it sends an empty `AcceptDecide` with the next sequence
    /// number: a follower that lost a message sees the gap and asks for a
    /// sync; one that did not answers with its accepted index.
    fn probe_stalled_followers(&mut self) {
        if self.message_entries_bytes_max == usize::MAX {
            return;
        }
        let accepted_idx = self.internal_storage.get_accepted_idx();
        let decided_idx = self.internal_storage.get_decided_idx();
        for follower in self.leader_state.get_promised_followers() {
            let follower_idx = self.leader_state.get_accepted_idx(follower);
            let stalled = follower_idx < accepted_idx
                && self.leader_state.get_probed_accepted_idx(follower) == Some(follower_idx);
            self.leader_state
                .set_probed_accepted_idx(follower, Some(follower_idx));
            if !stalled {
                continue;
            }
            self.leader_state
                .set_latest_accept_meta(follower, Some(self.outgoing.len()));
            let probe = AcceptDecide {
                n: self.leader_state.n_leader,
                seq_num: self.leader_state.next_seq_num(follower),
                decided_idx,
                entries: vec![],
            };
            self.outgoing.push(Message::SequencePaxos(PaxosMessage {
                from: self.pid,
                to: follower,
                msg: PaxosMsg::AcceptDecide(probe),
            }));
        }
    }

    pub(crate) fn flush_batch_leader(&mut self) {
        let accepted_metadata = self
            .internal_storage
            .flush_batch_and_get_entries()
            .expect(WRITE_ERROR_MSG);
        if let Some(metadata) = accepted_metadata {
            self.leader_state
                .set_accepted_idx(self.pid, metadata.accepted_idx);
            self.send_acceptdecide(metadata);
        }
    }
}
