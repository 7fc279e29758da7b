//! The bytes of a snapshot as openraft moves them: a file, never a copy in memory.
//!
//! [`SnapshotData`] is the part of a file from an offset to its end: the encoded state
//! inside a stored snapshot file (after its header), or the whole of a file a follower
//! receives chunks into. openraft reads it in chunks to send it and writes received
//! chunks at their offsets; positions are relative to the start of the window, so what
//! goes over the wire is the encoded state alone, as it always was.
//!
//! This module knows no snapshot file layout (that is `raftcast-storage`'s) and does no
//! blocking I/O: `tokio::fs::File` runs each operation on the blocking pool.

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A window `[start, end of file)` of a file, read, written and sought relative to
/// `start`.
#[derive(Debug)]
pub struct SnapshotData {
    file: tokio::fs::File,
    start: u64,
    /// A seek was started and its result not yet taken. (Before starting one, tokio's
    /// seek asks for the result of any earlier one; `tokio::fs::File` then answers a
    /// position it does not really know for a file made with `from_std`.)
    seeking: bool,
}

impl SnapshotData {
    /// The window of `file` from `start` to its end. The file's position must be `start`
    /// (or be sought before use: openraft seeks before every read and write).
    pub fn new(file: std::fs::File, start: u64) -> Self {
        SnapshotData { file: tokio::fs::File::from_std(file), start, seeking: false }
    }

    /// Where the window starts in the file.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The file, once every pending operation on it is done (for blocking reads on
    /// tokio's blocking pool). Its position is unspecified: seek to [`Self::start`].
    pub async fn into_std(self) -> (std::fs::File, u64) {
        (self.file.into_std().await, self.start)
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let position = match position {
            SeekFrom::Start(n) => SeekFrom::Start(
                self.start
                    .checked_add(n)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek overflow"))?,
            ),
            // Relative seeks may not go before the window: checked in `poll_complete`.
            relative => relative,
        };
        Pin::new(&mut self.file).start_seek(position)?;
        self.seeking = true;
        Ok(())
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let start = self.start;
        let at = match Pin::new(&mut self.file).poll_complete(cx) {
            Poll::Ready(Ok(at)) => at,
            other => return other,
        };
        if !std::mem::take(&mut self.seeking) {
            return Poll::Ready(Ok(at.saturating_sub(start)));
        }
        Poll::Ready(
            at.checked_sub(start).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the snapshot data")
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn positions_are_relative_to_the_window() {
        let dir = std::env::temp_dir().join(format!("raftcast-snapshot-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("window");
        std::fs::write(&path, b"headerDATA").unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut data = SnapshotData::new(file, 6);
        assert_eq!(data.seek(SeekFrom::End(0)).await.unwrap(), 4);
        assert_eq!(data.seek(SeekFrom::Start(1)).await.unwrap(), 1);
        let mut rest = Vec::new();
        data.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"ATA");
        data.seek(SeekFrom::Start(4)).await.unwrap();
        data.write_all(b"!").await.unwrap();
        data.shutdown().await.unwrap();
        assert!(data.seek(SeekFrom::Current(-6)).await.is_err());
        drop(data);
        assert_eq!(std::fs::read(&path).unwrap(), b"headerDATA!");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
