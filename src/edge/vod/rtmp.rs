//! One RTMP VOD play (`rtmp://EDGE/vod/{id}`, `docs/vod.md`, "Edges: RTMP"): drives a
//! [`Player`] with the clock and the client's controls, reads the frames it asks for
//! from the cached file (positional reads on the blocking pool) and yields them as
//! chunk bytes for the connection, with the notes its session must send.
//!
//! The connection (`edge::rtmp_conn`) polls it like a live play's pump and forwards
//! the client's `seek`, `pause` and buffer length through a bounded channel. A batch
//! read while a control arrives is dropped before it is yielded (the control may move
//! the position): what the client receives after a `seek` or a `pause` is what the
//! player decided after it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::hls::VodIndex;
use super::player::{Control, Note, Player, Step};
use super::VodFile;
use crate::rtmp::chunk::RawMessage;
use crate::rtmp::message;
use crate::rtmp::session::{prechunk_into, CSID_AUDIO, CSID_VIDEO};

/// Controls a client may have in flight before more are ignored.
pub(crate) const MAX_CONTROLS: usize = 16;

/// What a VOD play yields to its connection.
pub(crate) enum VodOut {
    /// Chunk bytes: headers or frames.
    Media(Bytes),
    /// For the session to send; `duration` is the file's.
    Note(Note, Duration),
    /// Reading the file failed: the play cannot go on.
    Failed(String),
}

pub(crate) struct VodPlay {
    stream_id: u32,
    chunk_size: u32,
    player: Player,
    vod: VodFile,
    controls: mpsc::Receiver<Control>,
}

impl VodPlay {
    /// A play of `vod` (indexed as `index`) from `start_ms` for `length_ms`, and the
    /// sender of its controls.
    pub(crate) fn new(
        stream_id: u32,
        chunk_size: u32,
        vod: VodFile,
        index: Arc<VodIndex>,
        (start_ms, length_ms): (Option<u64>, Option<u64>),
    ) -> (VodPlay, mpsc::Sender<Control>) {
        let (tx, controls) = mpsc::channel(MAX_CONTROLS);
        let player = Player::new(index, start_ms, length_ms);
        (VodPlay { stream_id, chunk_size, player, vod, controls }, tx)
    }

    /// The play as a stream that ends only when its controls' sender is dropped or
    /// the file cannot be read.
    pub(crate) fn into_stream(self) -> BoxStream<'static, VodOut> {
        futures::stream::unfold(self, |mut play| async move { play.next().await.map(|out| (out, play)) }).boxed()
    }

    async fn next(&mut self) -> Option<VodOut> {
        loop {
            while let Ok(control) = self.controls.try_recv() {
                self.player.control(control);
            }
            let duration = self.player.index().duration();
            match self.player.step(Instant::now().into_std()) {
                Step::Note(note) => return Some(VodOut::Note(note, duration)),
                Step::Headers(time_ms) => {
                    let [video, audio] = self.player.index().headers();
                    let mut out = BytesMut::new();
                    for (header, audio) in [(video, false), (audio, true)] {
                        if let Some(body) = header {
                            self.chunk_into(audio, time_ms, body.clone(), &mut out);
                        }
                    }
                    if !out.is_empty() {
                        return Some(VodOut::Media(out.freeze()));
                    }
                }
                Step::Frames(range) => {
                    let tags = self.player.index().frames()[range.clone()].to_vec();
                    let file = self.vod.file.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt as _;
                        tags.into_iter()
                            .map(|tag| {
                                let mut body = vec![0; tag.size as usize];
                                file.read_exact_at(&mut body, tag.body_at)?;
                                Ok((tag, Bytes::from(body)))
                            })
                            .collect::<std::io::Result<Vec<_>>>()
                    })
                    .await;
                    let frames = match read {
                        Ok(Ok(frames)) => frames,
                        Ok(Err(e)) => return Some(VodOut::Failed(format!("reading {}: {e}", self.vod.id))),
                        Err(e) => return Some(VodOut::Failed(e.to_string())),
                    };
                    if !self.controls.is_empty() {
                        // Decided before the control: the loop applies it and asks again.
                        continue;
                    }
                    self.player.sent(range.end);
                    let mut out = BytesMut::new();
                    for (tag, body) in frames {
                        self.chunk_into(tag.is_audio(), tag.time_ms, body, &mut out);
                    }
                    return Some(VodOut::Media(out.freeze()));
                }
                Step::Wait(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(Instant::from_std(until)) => {}
                        control = self.controls.recv() => self.player.control(control?),
                    }
                }
                Step::Idle => {
                    let control = self.controls.recv().await?;
                    self.player.control(control);
                }
            }
        }
    }

    /// One message's chunks appended to `out` (type-0 headers: each message stands
    /// alone).
    fn chunk_into(&self, audio: bool, time_ms: u32, payload: Bytes, out: &mut BytesMut) {
        let (csid, type_id) = if audio { (CSID_AUDIO, message::AUDIO) } else { (CSID_VIDEO, message::VIDEO) };
        let msg = RawMessage { csid, timestamp: time_ms, type_id, stream_id: self.stream_id, payload };
        prechunk_into(&msg, self.chunk_size, out);
    }
}
