//! The outbound queue of one peer: bounded, never blocking the sender, drained
//! by the peer's writer in batches.
//!
//! Senders push from any thread without waiting (a short mutex, no await);
//! the one writer of the peer's current connection takes everything queued,
//! up to a batch limit, in one go, so under load many messages share a frame
//! and a write.
//!
//! Invariants:
//! - At most `messages_max` messages and `bytes_max` bytes are queued, except
//!   that an empty queue takes one message of any size (up to
//!   [`MESSAGE_BYTES_MAX`]), so that every sendable message can be sent.
//! - A batch is never empty, holds at most [`MESSAGES_PER_FRAME_MAX`]
//!   messages, and stays within `batch_bytes_max` unless it is a single
//!   message: it always fits in one frame.
//! - Messages leave in the order they were pushed.
//! - Once closed (its peer removed), the queue accepts nothing more.
//!
//! It does not count drops itself: it reports them to the caller, which
//! counts, because only the caller knows whom to blame.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::frame::{MESSAGES_PER_FRAME_MAX, MESSAGE_BYTES_MAX, MESSAGE_HEADER_BYTES};

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// At the message or byte bound.
    Full,
    /// Larger than any frame can carry.
    TooLarge,
    /// The peer was removed.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    messages: VecDeque<Bytes>,
    /// Sum over `messages` of body plus [`MESSAGE_HEADER_BYTES`], so that
    /// empty messages weigh something too.
    bytes: usize,
    closed: bool,
}

/// A bounded multi-producer, single-consumer queue of messages.
#[derive(Debug)]
pub struct OutboundQueue {
    state: Mutex<State>,
    /// Wakes the writer after a push. It stores a permit when the writer is
    /// not waiting, so a push between "queue empty" and "wait" is not missed.
    pushed: Notify,
    messages_max: usize,
    bytes_max: usize,
}

impl OutboundQueue {
    /// An empty queue with the given bounds.
    pub fn new(messages_max: usize, bytes_max: usize) -> OutboundQueue {
        assert!(messages_max > 0 && bytes_max > 0, "queue bounds must be set");
        OutboundQueue {
            state: Mutex::new(State::default()),
            pushed: Notify::new(),
            messages_max,
            bytes_max,
        }
    }

    /// Queues `message`, or says why not. Never waits.
    pub fn push(&self, message: Bytes) -> Result<(), Refused> {
        if message.len() > MESSAGE_BYTES_MAX {
            return Err(Refused::TooLarge);
        }
        let weight = message.len() + MESSAGE_HEADER_BYTES;
        {
            let mut state = self.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            let empty = state.messages.is_empty();
            if state.messages.len() >= self.messages_max
                || (!empty && state.bytes + weight > self.bytes_max)
            {
                return Err(Refused::Full);
            }
            state.messages.push_back(message);
            state.bytes += weight;
            assert!(state.messages.len() <= self.messages_max);
        }
        self.pushed.notify_one();
        Ok(())
    }

    /// Takes the oldest messages, as many as fit in `batch_bytes_max` (at
    /// least one), or `None` when the queue is empty.
    pub fn try_take_batch(&self, batch_bytes_max: usize) -> Option<Vec<Bytes>> {
        let mut state = self.lock();
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while let Some(front) = state.messages.front() {
            let weight = front.len() + MESSAGE_HEADER_BYTES;
            let full =
                batch_bytes + weight > batch_bytes_max || batch.len() == MESSAGES_PER_FRAME_MAX;
            if !batch.is_empty() && full {
                break;
            }
            let Some(message) = state.messages.pop_front() else {
                break;
            };
            state.bytes -= weight;
            batch_bytes += weight;
            batch.push(message);
        }
        assert!(state.messages.is_empty() == (state.bytes == 0), "byte count drifted");
        (!batch.is_empty()).then_some(batch)
    }

    /// Waits for messages and takes a batch of them. Cancel-safe: messages
    /// are taken only in the poll that returns them.
    pub async fn take_batch(&self, batch_bytes_max: usize) -> Vec<Bytes> {
        loop {
            if let Some(batch) = self.try_take_batch(batch_bytes_max) {
                return batch;
            }
            self.pushed.notified().await;
        }
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Refuses further pushes and discards what is queued; returns how many
    /// messages were discarded.
    pub fn close(&self) -> usize {
        let mut state = self.lock();
        state.closed = true;
        state.bytes = 0;
        let discarded = state.messages.len();
        state.messages.clear();
        discarded
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    // The message bound refuses the next push and keeps what was queued.
    #[test]
    fn message_bound_refuses_without_losing_queued() {
        let queue = OutboundQueue::new(2, 1 << 20);
        assert_eq!(queue.push(message(1)), Ok(()));
        assert_eq!(queue.push(message(2)), Ok(()));
        assert_eq!(queue.push(message(3)), Err(Refused::Full));
        let batch = queue.try_take_batch(1 << 20).expect("two queued");
        assert_eq!(batch, vec![message(1), message(2)]);
    }

    // The byte bound counts headers, and an empty queue takes a message
    // larger than the bound so that it can be sent at all.
    #[test]
    fn byte_bound_counts_headers_and_lets_a_big_message_alone() {
        let queue = OutboundQueue::new(100, 10);
        assert_eq!(queue.push(message(6)), Ok(()));
        assert_eq!(queue.push(Bytes::new()), Err(Refused::Full), "6+4 + 0+4 > 10");
        queue.try_take_batch(100).expect("one queued");
        assert_eq!(queue.push(message(50)), Ok(()), "empty queue takes it");
        assert_eq!(queue.push(Bytes::new()), Err(Refused::Full));
    }

    // Batches respect the byte limit and order, but never come back empty.
    #[test]
    fn batches_split_on_the_byte_limit_in_order() {
        let queue = OutboundQueue::new(100, 1 << 20);
        for len in [10, 10, 30, 5] {
            queue.push(message(len)).expect("room");
        }
        let sizes = |b: Vec<Bytes>| b.iter().map(Bytes::len).collect::<Vec<_>>();
        assert_eq!(sizes(queue.try_take_batch(28).expect("some")), vec![10, 10]);
        assert_eq!(sizes(queue.try_take_batch(28).expect("some")), vec![30]);
        assert_eq!(sizes(queue.try_take_batch(28).expect("some")), vec![5]);
        assert_eq!(queue.try_take_batch(28), None);
    }

    // A closed queue refuses pushes and reports what it discarded.
    #[test]
    fn close_discards_and_refuses() {
        let queue = OutboundQueue::new(10, 1 << 20);
        queue.push(message(1)).expect("room");
        assert_eq!(queue.close(), 1);
        assert_eq!(queue.push(message(1)), Err(Refused::Closed));
        assert_eq!(queue.len(), 0);
    }

    // A message that cannot fit in a frame is refused up front.
    #[test]
    fn oversized_message_is_refused() {
        let queue = OutboundQueue::new(10, 1 << 20);
        let too_big = Bytes::from(vec![0u8; MESSAGE_BYTES_MAX + 1]);
        assert_eq!(queue.push(too_big), Err(Refused::TooLarge));
    }
}
