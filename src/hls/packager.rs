//! Frames with their [`HlsMark`](super::mark::HlsMark)s in, fMP4 init segments, parts
//! and segments out ([`Packaged`]); deterministic, so every edge produces the same bytes.

use super::Packaged;
use crate::media::Frame;

/// One stream's packager on one edge.
#[derive(Debug, Default)]
pub struct Packager {}

impl Packager {
    pub fn new() -> Self {
        Packager {}
    }

    /// Takes the stream's next frame (headers included, in the order the relay got
    /// them) and returns what it completed. Frames without a mark are ignored.
    pub fn push(&mut self, _frame: &Frame) -> Vec<Packaged> {
        // Placeholder of the interface commit; the packager work replaces it.
        Vec::new()
    }

    /// The stream's publishing generation ended: completes what is open. (Placeholder
    /// of the serve branch, so the HLS task can call it; the packager work replaces it.)
    pub fn finish(&mut self) -> Vec<Packaged> {
        Vec::new()
    }
}
