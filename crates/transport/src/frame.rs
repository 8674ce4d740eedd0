//! The wire format: length-delimited frames, each one a handshake, a batch of
//! messages, or a ping.
//!
//! ```text
//! frame      = length:u32 kind:u8 body          length counts kind and body
//! HELLO  (1) = magic:"CAIRN-TP" version:u16 cluster_id:u64 from:u64 to:u64
//! ACK    (2) = the same fields as HELLO, from the accepting node
//! BATCH  (3) = 1..=MESSAGES_PER_FRAME_MAX of { length:u32 bytes }
//! PING   (4) = empty
//! ```
//!
//! All integers are big-endian. The length prefix is that of tokio-util's
//! `LengthDelimitedCodec` with its defaults, which does the framing; this
//! module adds the kinds on top and writes batches straight into the output
//! buffer (one copy of each message, not two).
//!
//! Invariants:
//! - No frame over [`FRAME_BYTES_MAX`] is written or read. Before the handshake
//!   the limit is [`HANDSHAKE_FRAME_BYTES_MAX`], so a stranger cannot make a
//!   node buffer 64 MiB by opening a socket.
//! - A batch is parsed completely before any of it is delivered: a malformed
//!   batch delivers nothing. Messages share the frame's buffer (no copy).
//! - Every malformed input is an [`Error`], never a panic.
//!
//! It does not judge a handshake (right cluster, right node?): that is the
//! connection logic's, which knows the configuration.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::Error;

/// Largest frame, length prefix excluded (64 MiB). Snapshot chunks and other
/// large messages of consensus are kept well below it.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest frame accepted before the handshake completes. A handshake frame is
/// 35 bytes; the slack costs nothing.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 256;
/// Most messages one batch frame may carry. Bounds the work and the index
/// memory one frame can cost a receiver, whatever the message sizes.
pub const MESSAGES_PER_FRAME_MAX: usize = 65_536;
/// Bytes a batch spends on each message besides its body: its length.
pub const MESSAGE_HEADER_BYTES: usize = 4;
/// Bytes every frame spends on its kind.
const KIND_BYTES: usize = 1;
/// Largest message that can be sent: one alone in a frame.
pub const MESSAGE_BYTES_MAX: usize = FRAME_BYTES_MAX - KIND_BYTES - MESSAGE_HEADER_BYTES;
/// Version of this format, checked in the handshake. Raise it on any change
/// of the wire format; nodes of different versions refuse each other.
pub const PROTOCOL_VERSION: u16 = 1;
/// First bytes of a handshake: tells a Cairn peer from anything else that
/// dials the port.
pub const MAGIC: [u8; 8] = *b"CAIRN-TP";

const KIND_HELLO: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_BATCH: u8 = 3;
const KIND_PING: u8 = 4;
/// Bytes of a HELLO or ACK body.
const HELLO_BODY_BYTES: usize = MAGIC.len() + 2 + 8 + 8 + 8;

/// What a handshake frame says: "I am `from` of `cluster_id`, and I take you
/// for `to`". The version is checked while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub cluster_id: u64,
    pub from: u64,
    pub to: u64,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The dialer's opening frame.
    Hello(Handshake),
    /// The accepting node's answer: the connection is established.
    Ack(Handshake),
    /// Messages, in send order.
    Batch(Vec<Bytes>),
    /// Nothing to say; proves the sender is alive.
    Ping,
}

/// Frames on a byte stream. Starts with the handshake limit; call
/// [`FrameCodec::establish`] once the handshake has passed.
#[derive(Debug)]
pub struct FrameCodec {
    framing: LengthDelimitedCodec,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new()
    }
}

impl FrameCodec {
    /// A codec in the handshake phase.
    pub fn new() -> FrameCodec {
        let framing =
            LengthDelimitedCodec::builder().max_frame_length(HANDSHAKE_FRAME_BYTES_MAX).new_codec();
        FrameCodec { framing }
    }

    /// Raises the frame limit to [`FRAME_BYTES_MAX`] for an established
    /// connection.
    pub fn establish(&mut self) {
        self.framing.set_max_frame_length(FRAME_BYTES_MAX);
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let payload = match self.framing.decode(src) {
            Ok(Some(payload)) => payload.freeze(),
            Ok(None) => return Ok(None),
            // The framing fails only on a length over the limit.
            Err(e) => return Err(Error::protocol(format!("bad frame length: {e}"))),
        };
        parse(payload).map(Some)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), Error> {
        let length = encoded_len(&frame);
        if length > FRAME_BYTES_MAX {
            // The queue never builds such a batch; refusing keeps a bug from
            // becoming a frame every peer would reject.
            return Err(Error::protocol(format!(
                "refusing to write a frame of {length} bytes (limit {FRAME_BYTES_MAX})"
            )));
        }
        dst.reserve(4 + length);
        dst.put_u32(length as u32);
        match frame {
            Frame::Hello(hello) => put_hello(dst, KIND_HELLO, hello),
            Frame::Ack(hello) => put_hello(dst, KIND_ACK, hello),
            Frame::Batch(messages) => {
                dst.put_u8(KIND_BATCH);
                for message in messages {
                    dst.put_u32(message.len() as u32);
                    dst.extend_from_slice(&message);
                }
            }
            Frame::Ping => dst.put_u8(KIND_PING),
        }
        Ok(())
    }
}

/// Bytes of a frame after its length prefix.
fn encoded_len(frame: &Frame) -> usize {
    KIND_BYTES
        + match frame {
            Frame::Hello(_) | Frame::Ack(_) => HELLO_BODY_BYTES,
            Frame::Batch(messages) => messages.iter().map(|m| MESSAGE_HEADER_BYTES + m.len()).sum(),
            Frame::Ping => 0,
        }
}

fn put_hello(dst: &mut BytesMut, kind: u8, hello: Handshake) {
    dst.put_u8(kind);
    dst.extend_from_slice(&MAGIC);
    dst.put_u16(PROTOCOL_VERSION);
    dst.put_u64(hello.cluster_id);
    dst.put_u64(hello.from);
    dst.put_u64(hello.to);
}

fn parse(mut payload: Bytes) -> Result<Frame, Error> {
    if payload.is_empty() {
        return Err(Error::protocol("empty frame"));
    }
    match payload.get_u8() {
        KIND_HELLO => parse_hello(payload).map(Frame::Hello),
        KIND_ACK => parse_hello(payload).map(Frame::Ack),
        KIND_BATCH => parse_batch(payload).map(Frame::Batch),
        KIND_PING if payload.is_empty() => Ok(Frame::Ping),
        KIND_PING => Err(Error::protocol("ping with a body")),
        kind => Err(Error::protocol(format!("unknown frame kind {kind}"))),
    }
}

fn parse_hello(mut body: Bytes) -> Result<Handshake, Error> {
    if body.len() < MAGIC.len() + 2 || body[..MAGIC.len()] != MAGIC {
        return Err(Error::handshake("not a Cairn transport handshake (bad magic)"));
    }
    body.advance(MAGIC.len());
    let version = body.get_u16();
    if version != PROTOCOL_VERSION {
        return Err(Error::handshake(format!(
            "peer speaks protocol version {version}, this node speaks {PROTOCOL_VERSION}"
        )));
    }
    if body.len() != HELLO_BODY_BYTES - MAGIC.len() - 2 {
        return Err(Error::handshake(format!(
            "handshake body of {} bytes, expected {HELLO_BODY_BYTES}",
            body.len() + MAGIC.len() + 2
        )));
    }
    Ok(Handshake { cluster_id: body.get_u64(), from: body.get_u64(), to: body.get_u64() })
}

fn parse_batch(mut body: Bytes) -> Result<Vec<Bytes>, Error> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        if messages.len() == MESSAGES_PER_FRAME_MAX {
            return Err(Error::protocol(format!(
                "batch carries more than {MESSAGES_PER_FRAME_MAX} messages"
            )));
        }
        if body.len() < MESSAGE_HEADER_BYTES {
            return Err(Error::protocol("batch ends inside a message length"));
        }
        let length = body.get_u32() as usize;
        if length > body.len() {
            return Err(Error::protocol(format!(
                "message of {length} bytes overruns its batch ({} bytes left)",
                body.len()
            )));
        }
        messages.push(body.split_to(length));
    }
    if messages.is_empty() {
        return Err(Error::protocol("empty batch"));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn established() -> FrameCodec {
        let mut codec = FrameCodec::new();
        codec.establish();
        codec
    }

    fn roundtrip(codec: &mut FrameCodec, frame: Frame) -> Frame {
        let mut buf = BytesMut::new();
        codec.encode(frame, &mut buf).expect("encodes");
        let decoded = codec.decode(&mut buf).expect("decodes").expect("whole");
        assert!(buf.is_empty(), "the frame was consumed entirely");
        decoded
    }

    // The handshake frame has the documented size and layout.
    #[test]
    fn hello_matches_the_documented_layout() {
        let hello = Handshake { cluster_id: 7, from: 1, to: 2 };
        let mut buf = BytesMut::new();
        FrameCodec::new().encode(Frame::Hello(hello), &mut buf).expect("encodes");
        let mut expected = vec![0, 0, 0, 35, KIND_HELLO];
        expected.extend_from_slice(b"CAIRN-TP");
        expected.extend_from_slice(&[0, 1]);
        expected.extend_from_slice(&7u64.to_be_bytes());
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&2u64.to_be_bytes());
        assert_eq!(&buf[..], &expected[..]);
    }

    // Before the handshake a large length prefix is refused at once, without
    // waiting for (or buffering) its body.
    #[test]
    fn large_frame_is_refused_before_the_handshake() {
        let mut buf = BytesMut::from(&[0u8, 0, 4, 0, KIND_PING][..]);
        let err = FrameCodec::new().decode(&mut buf).expect_err("over the limit");
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
    }

    // A version mismatch is named in the error.
    #[test]
    fn other_version_is_refused_by_name() {
        let mut buf = BytesMut::new();
        let mut codec = FrameCodec::new();
        let hello = Handshake { cluster_id: 1, from: 1, to: 2 };
        codec.encode(Frame::Hello(hello), &mut buf).expect("encodes");
        buf[4 + 1 + 8 + 1] = 9; // low byte of the version
        let err = codec.decode(&mut buf).expect_err("other version");
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    // Zero-length messages survive, and a batch keeps their order.
    #[test]
    fn batch_keeps_empty_messages_and_order() {
        let batch = vec![Bytes::new(), Bytes::from_static(b"a"), Bytes::new()];
        let decoded = roundtrip(&mut established(), Frame::Batch(batch.clone()));
        assert_eq!(decoded, Frame::Batch(batch));
    }

    // A batch over the frame limit is refused by the encoder.
    #[test]
    fn oversized_batch_is_not_written() {
        let big = Bytes::from(vec![0u8; MESSAGE_BYTES_MAX]);
        let mut buf = BytesMut::new();
        let mut codec = established();
        codec.encode(Frame::Batch(vec![big.clone()]), &mut buf).expect("one maximal message fits");
        let err = codec
            .encode(Frame::Batch(vec![big, Bytes::new()]), &mut BytesMut::new())
            .expect_err("over the frame limit");
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
    }

    proptest! {
        // Any batch within the limits comes back as it was sent.
        #[test]
        fn batches_roundtrip(messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..32)) {
            let batch: Vec<Bytes> = messages.into_iter().map(Bytes::from).collect();
            let decoded = roundtrip(&mut established(), Frame::Batch(batch.clone()));
            prop_assert_eq!(decoded, Frame::Batch(batch));
        }

        // Arbitrary bytes from the network are decoded or refused, never a
        // panic, in either phase.
        #[test]
        fn arbitrary_input_never_panics(input in prop::collection::vec(any::<u8>(), 0..512), establish in any::<bool>()) {
            let mut codec = FrameCodec::new();
            if establish {
                codec.establish();
            }
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }

        // Arbitrary batch bodies behind a valid prefix are parsed or refused.
        #[test]
        fn arbitrary_batch_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32 + 1);
            buf.put_u8(KIND_BATCH);
            buf.extend_from_slice(&body);
            let _ = established().decode(&mut buf);
        }
    }
}
