//! A whole server session fed hostile bytes after the handshake: chunks, messages,
//! commands (AMF0 and the AMF3 envelope) and the session state machine that answers
//! them, with the driver accepting every connect, publish and play and answering the
//! recorded-stream controls (`seek`, `pause`, `getStreamLength`). Must never panic; an
//! error ends the (simulated) connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftcast::rtmp::session::{ServerConfig, ServerEvent, ServerSession};

fuzz_target!(|data: &[u8]| {
    let mut session = ServerSession::new(ServerConfig::default());
    // Feed in three reads to exercise partial chunks at several points.
    let a = data.first().map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let b = data.get(1).map_or(a, |x| a + usize::from(*x) % (data.len() - a + 1));
    for part in [&data[..a], &data[a..b], &data[b..]] {
        let Ok(events) = session.handle_input(part) else { return };
        for event in events {
            match event {
                ServerEvent::Connect { .. } => session.accept_connect(),
                ServerEvent::Publish { stream_id, .. } => session.accept_publish(stream_id),
                ServerEvent::Play { stream_id, .. } => {
                    session.accept_play(stream_id);
                    session.send_metadata(stream_id, 12.5);
                    session.send_video(stream_id, 0, bytes::Bytes::from_static(&[0x17, 0, 0, 0, 0]));
                }
                ServerEvent::Seek { stream_id, ms } => session.seek_notify(stream_id, ms.max(0.0) as u64),
                ServerEvent::Pause { stream_id, pause, ms } => {
                    session.pause_notify(stream_id, pause, ms.max(0.0) as u64);
                    session.buffer_empty(stream_id);
                    session.play_complete(stream_id, 12.5);
                }
                ServerEvent::StreamLength { transaction_id, .. } => session.answer_stream_length(transaction_id, 12.5),
                _ => {}
            }
        }
        let _ = session.take_output();
    }
});
