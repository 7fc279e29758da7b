//! What an RTMP client can send after the handshake: chunk streams carrying any
//! messages. Every completed message is parsed (commands decode their AMF). Must never
//! panic; errors end the (simulated) connection.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use raftcast::rtmp::chunk::{ChunkDecoder, DecoderLimits};
use raftcast::rtmp::message::Message;

fuzz_target!(|data: &[u8]| {
    let mut decoder = ChunkDecoder::new(DecoderLimits::default());
    // Feed in two reads to exercise partial chunks.
    let split = data.first().map_or(0, |b| usize::from(*b) % (data.len() + 1));
    for part in [&data[..split], &data[split..]] {
        let mut buf = BytesMut::from(part);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(raw)) => {
                    let _ = Message::parse(&raw);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
