//! The peer frame decoder on any bytes a stranger or a broken peer could
//! send: it never panics, never allocates past its limits, and whatever it
//! decodes encodes back to a frame that decodes the same.
#![no_main]

use bytes::BytesMut;
use cairn_transport::frame::FrameCodec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the phase: before the handshake (small frames
    // only) or after it.
    let Some((&phase, bytes)) = data.split_first() else { return };
    let mut codec = FrameCodec::new();
    if phase & 1 == 1 {
        codec.establish();
    }
    let mut src = BytesMut::from(bytes);
    // A stream can hold several frames; stop at the first error, as a link
    // closes the connection there.
    while let Ok(Some(frame)) = codec.decode(&mut src) {
        let mut encoder = FrameCodec::new();
        encoder.establish();
        let mut encoded = BytesMut::new();
        if encoder.encode(frame.clone(), &mut encoded).is_ok() {
            let mut decoder = FrameCodec::new();
            decoder.establish();
            let again = decoder.decode(&mut encoded).expect("an encoded frame decodes");
            assert_eq!(again, Some(frame), "a frame survives encoding");
        }
    }
});
