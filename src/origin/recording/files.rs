//! Piece files on an origin's disk, all blocking (callers run these on the blocking
//! pool): the writer of a piece, the recovery of a piece whose writer died, and the
//! scan of a finished one.
//!
//! A piece is named by its claim epoch alone (`{epoch}.flv`): no name that came from
//! the network ever becomes part of a path. While written it is `{epoch}.flv.part`;
//! it is renamed once complete and synced, so a `.part` file found later is a piece
//! whose writer died (a SIGKILL, a crash): its torn tail is cut at the last complete
//! tag. A replica being fetched is `{epoch}.flv.copy` until it is complete.
//!
//! Beside each piece, `{epoch}.marks` ([`super::marks`]): one record per tag, written
//! with the piece, never renamed (a replica's is fetched into `{epoch}.marks.copy`
//! first). Removing a piece removes its marks.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::flv_file::{self, FlvError, TagReader, Tally};
use super::marks::{self, MarkRecord};
use crate::media::Frame;
use crate::rtmp::flv;

/// Bytes the writer gathers before a write; it also writes whenever its queue is
/// empty, so frames reach the kernel (and survive a SIGKILL) as soon as nothing waits.
const WRITE_BUFFER: usize = 256 * 1024;
/// How often a piece being written is synced to the disk (`fdatasync`): what a power
/// loss of the owner can take from it beyond what its edge re-sends the next owner.
/// A SIGKILL takes nothing the writer had written: the kernel has it.
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes read at a time when scanning or recovering a piece.
const READ_CHUNK: usize = 256 * 1024;

/// What went wrong with a piece file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// The piece of this epoch is complete already (it ended here and its publisher
    /// came back after [`super::LINGER`]); what follows is not recorded.
    #[error("{0} exists already")]
    Exists(PathBuf),
    /// The file is not a readable FLV piece.
    #[error("{path}: {source}")]
    Flv { path: PathBuf, source: FlvError },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError::Io { what, path, source }
}

/// The complete piece written under `epoch`.
pub fn piece_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch}.flv"))
}

/// The piece being written under `epoch`.
pub fn part_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch}.flv.part"))
}

/// A replica of the piece of `epoch` being fetched.
pub fn copy_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch}.flv.copy"))
}

/// The marks of the piece of `epoch` (written with it, never renamed).
pub fn marks_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch}.marks"))
}

/// The marks of a replica of the piece of `epoch` being fetched.
pub fn marks_copy_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch}.marks.copy"))
}

/// Bytes the marks writer gathers before a write (it also writes whenever the piece
/// is flushed).
const MARKS_BUFFER: usize = 16 * 1024;

/// What a file in the recordings folder is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A complete piece.
    Piece(u64),
    /// A piece whose writer is running or died.
    Part(u64),
    /// A replica whose fetch is running or was cut off.
    Copy(u64),
    /// The marks of a piece (of a complete one, or one being written).
    Marks(u64),
    /// The marks of a replica whose fetch is running or was cut off.
    MarksCopy(u64),
}

/// Parses a file name of the recordings folder (others are ignored).
pub fn classify(name: &str) -> Option<Found> {
    let epoch = |s: &str| s.parse::<u64>().ok().filter(|_| s.bytes().all(|b| b.is_ascii_digit()));
    if let Some(e) = name.strip_suffix(".flv.part") {
        return epoch(e).map(Found::Part);
    }
    if let Some(e) = name.strip_suffix(".flv.copy") {
        return epoch(e).map(Found::Copy);
    }
    if let Some(e) = name.strip_suffix(".marks.copy") {
        return epoch(e).map(Found::MarksCopy);
    }
    if let Some(e) = name.strip_suffix(".marks") {
        return epoch(e).map(Found::Marks);
    }
    name.strip_suffix(".flv").and_then(epoch).map(Found::Piece)
}

/// Every piece-related file in `dir`.
pub fn list(dir: &Path) -> Result<Vec<Found>, FileError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("listing", dir))?;
        if let Some(f) = entry.file_name().to_str().and_then(classify) {
            found.push(f);
        }
    }
    Ok(found)
}

/// Syncs `dir` so a rename or a new file in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing", dir))
}

/// The marks file beside a piece being written. A failure to write it is logged once
/// and ends the marks (what was written stays valid: a prefix of the records), never
/// the piece.
struct MarksWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl MarksWriter {
    fn create(dir: &Path, epoch: u64) -> MarksWriter {
        let path = marks_path(dir, epoch);
        let out = OpenOptions::new().write(true).create(true).truncate(true).open(&path);
        let mut writer = MarksWriter { path, out: None };
        match out {
            Ok(file) => writer.out = Some(BufWriter::with_capacity(MARKS_BUFFER, file)),
            Err(e) => writer.failed(e),
        }
        writer
    }

    fn failed(&mut self, error: std::io::Error) {
        tracing::warn!(path = %self.path.display(), %error, "a piece's marks could not be written; its later segments cannot be rewound to");
        self.out = None;
    }

    fn add(&mut self, record: &MarkRecord) {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.write_all(&record.encode()) {
                self.failed(e);
            }
        }
    }

    fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                self.failed(e);
            }
        }
    }

    fn sync(&mut self) {
        self.flush();
        if let Some(out) = &mut self.out {
            if let Err(e) = out.get_ref().sync_data() {
                self.failed(e);
            }
        }
    }
}

/// Writes the piece of `epoch` from `frames` until the sender is dropped, then syncs it
/// and gives it its final name; its marks go to `{epoch}.marks` beside it, flushed and
/// synced with it. Blocking: run it on the blocking pool.
pub fn write_piece(dir: &Path, epoch: u64, mut frames: mpsc::Receiver<Frame>) -> Result<Tally, FileError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let done = piece_path(dir, epoch);
    if done.exists() {
        // The epoch's piece ended here before: never overwrite it.
        return Err(FileError::Exists(done));
    }
    let part = part_path(dir, epoch);
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(&part).map_err(io("creating", &part))?;
    let mut marks = MarksWriter::create(dir, epoch);
    sync_dir(dir)?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    out.write_all(&flv::FILE_HEADER).map_err(io("writing", &part))?;
    let mut tally = Tally::header();
    let mut synced = std::time::Instant::now();
    while let Some(frame) = frames.blocking_recv() {
        let tag = flv_file::tag(&frame);
        if tag.is_empty() {
            continue;
        }
        out.write_all(&tag).map_err(io("writing", &part))?;
        marks.add(&MarkRecord::of(&frame, tally.bytes));
        tally.add(&frame, tag.len());
        if frames.is_empty() {
            out.flush().map_err(io("writing", &part))?;
            marks.flush();
            if synced.elapsed() >= SYNC_EVERY {
                out.get_ref().sync_data().map_err(io("syncing", &part))?;
                marks.sync();
                synced = std::time::Instant::now();
            }
        }
    }
    let file = out.into_inner().map_err(|e| io("writing", &part)(e.into_error()))?;
    file.sync_data().map_err(io("syncing", &part))?;
    marks.sync();
    std::fs::rename(&part, &done).map_err(io("renaming", &part))?;
    sync_dir(dir)?;
    Ok(tally)
}

/// Reads `path` through a [`TagReader`]: the tally of its complete tags and where the
/// last one ends.
fn scan_file(path: &Path) -> Result<(Tally, u64), FileError> {
    let mut file = File::open(path).map_err(io("opening", path))?;
    let mut reader = TagReader::new();
    let mut tally = Tally::header();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = file.read(&mut chunk).map_err(io("reading", path))?;
        if n == 0 {
            return Ok((tally, reader.complete_len()));
        }
        reader.push(&chunk[..n]);
        loop {
            // (The first call also reads the file header, counted apart.)
            let before = reader.complete_len().max(flv::FILE_HEADER.len() as u64);
            match reader.next_frame() {
                Ok(Some(frame)) => tally.add(&frame, (reader.complete_len() - before) as usize),
                Ok(None) => break,
                // A damaged tag ends what can be used of the piece.
                Err(FlvError::WrongBackPointer(_) | FlvError::UnknownTagType(..)) => {
                    return Ok((tally, reader.complete_len()))
                }
                Err(source) => return Err(FileError::Flv { path: path.to_owned(), source }),
            }
        }
    }
}

/// What the complete piece at `path` holds.
pub fn scan(path: &Path) -> Result<Tally, FileError> {
    scan_file(path).map(|(tally, _)| tally)
}

/// Finishes the piece of `epoch` whose writer died: cuts the torn tail (a tag the
/// writer was in the middle of), syncs it and gives it its final name. A file too short
/// to hold the FLV header becomes an empty piece.
pub fn recover(dir: &Path, epoch: u64) -> Result<Tally, FileError> {
    let part = part_path(dir, epoch);
    let len = std::fs::metadata(&part).map_err(io("opening", &part))?.len();
    let (tally, keep) = if len < flv::FILE_HEADER.len() as u64 {
        std::fs::write(&part, flv::FILE_HEADER).map_err(io("writing", &part))?;
        (Tally::header(), flv::FILE_HEADER.len() as u64)
    } else {
        scan_file(&part)?
    };
    let file = OpenOptions::new().write(true).open(&part).map_err(io("opening", &part))?;
    if keep < len {
        tracing::info!(epoch, cut = len - keep, "a recording piece's torn tail was cut");
    }
    file.set_len(keep).map_err(io("truncating", &part))?;
    file.sync_data().map_err(io("syncing", &part))?;
    cut_marks(&marks_path(dir, epoch), keep)?;
    std::fs::rename(&part, piece_path(dir, epoch)).map_err(io("renaming", &part))?;
    sync_dir(dir)?;
    Ok(tally)
}

/// Cuts the marks at `path` (if there are any) to the whole, valid records of tags
/// that start before `keep`, the recovered piece's length (its tags there are whole),
/// and syncs them.
pub fn cut_marks(path: &Path, keep: u64) -> Result<(), FileError> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("opening", path)(e)),
    };
    let len = file.metadata().map_err(io("opening", path))?.len();
    let mut chunk = vec![0u8; (READ_CHUNK / marks::RECORD) * marks::RECORD];
    let (mut whole, mut after) = (0u64, 0u64);
    'read: loop {
        let mut filled = 0;
        while filled < chunk.len() {
            match file.read(&mut chunk[filled..]).map_err(io("reading", path))? {
                0 => break,
                n => filled += n,
            }
        }
        let records = marks::decode_all(&chunk[..filled], after);
        for r in &records {
            if r.offset >= keep {
                break 'read;
            }
            whole += 1;
            after = r.offset;
        }
        if filled < chunk.len() || records.len() * marks::RECORD < filled {
            break;
        }
    }
    let keep_marks = whole * marks::RECORD as u64;
    if keep_marks < len {
        tracing::info!(path = %path.display(), cut = len - keep_marks, "a piece's marks were cut to its recovered tags");
        file.set_len(keep_marks).map_err(io("truncating", path))?;
    }
    file.sync_data().map_err(io("syncing", path))
}

/// Moves a complete, synced replica into place as the piece of `epoch`.
/// Its marks, when they were fetched too, are moved into place first, so the piece is
/// never seen without the marks it came with.
pub fn commit_copy(dir: &Path, epoch: u64) -> Result<(), FileError> {
    let marks_copy = marks_copy_path(dir, epoch);
    if marks_copy.exists() {
        File::open(&marks_copy).and_then(|f| f.sync_data()).map_err(io("syncing", &marks_copy))?;
        std::fs::rename(&marks_copy, marks_path(dir, epoch)).map_err(io("renaming", &marks_copy))?;
    }
    let copy = copy_path(dir, epoch);
    File::open(&copy).and_then(|f| f.sync_data()).map_err(io("syncing", &copy))?;
    std::fs::rename(&copy, piece_path(dir, epoch)).map_err(io("renaming", &copy))?;
    sync_dir(dir)
}

/// Removes a file of `dir` (a deleted recording's piece, a stale copy) and, for a
/// piece or a copy, the marks that go with it.
pub fn remove(dir: &Path, found: Found) -> Result<(), FileError> {
    match found {
        Found::Piece(e) | Found::Part(e) => {
            remove_file(&marks_path(dir, e))?;
        }
        Found::Copy(e) => remove_file(&marks_copy_path(dir, e))?,
        Found::Marks(_) | Found::MarksCopy(_) => {}
    }
    let path = match found {
        Found::Piece(e) => piece_path(dir, e),
        Found::Part(e) => part_path(dir, e),
        Found::Copy(e) => copy_path(dir, e),
        Found::Marks(e) => marks_path(dir, e),
        Found::MarksCopy(e) => marks_copy_path(dir, e),
    };
    remove_file(&path)
}

fn remove_file(path: &Path) -> Result<(), FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn only_numeric_piece_names_are_recognised() {
        assert_eq!(classify("12.flv"), Some(Found::Piece(12)));
        assert_eq!(classify("12.flv.part"), Some(Found::Part(12)));
        assert_eq!(classify("12.flv.copy"), Some(Found::Copy(12)));
        assert_eq!(classify("12.marks"), Some(Found::Marks(12)));
        assert_eq!(classify("12.marks.copy"), Some(Found::MarksCopy(12)));
        for other in [
            "+12.flv",
            "../12.flv",
            "12.mp4",
            ".flv",
            "x.flv",
            "1 2.flv",
            "99999999999999999999999.flv",
            ".marks",
            "12.flv.marks",
            "12.marks.part",
            "12.marks.flv",
            "-1.marks",
            "x.marks.copy",
        ] {
            assert_eq!(classify(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn a_piece_is_written_synced_renamed_and_a_torn_one_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let (tx, rx) = mpsc::channel(4);
        let writer = tokio::task::spawn_blocking(move || write_piece(&path, 7, rx));
        for i in 0..10u8 {
            tx.send(Frame::video(u32::from(i) * 33, Bytes::from(vec![0x27, 1, 0, 0, 0, i]))).await.unwrap();
        }
        drop(tx);
        let tally = writer.await.unwrap().unwrap();
        assert_eq!((tally.frames, tally.first_ts, tally.last_ts), (10, Some(0), 297));
        let done = piece_path(dir.path(), 7);
        assert_eq!(std::fs::metadata(&done).unwrap().len(), tally.bytes);
        assert_eq!(scan(&done).unwrap(), tally);
        // A writer killed mid-tag leaves a .part whose tail is torn.
        let bytes = std::fs::read(&done).unwrap();
        std::fs::write(part_path(dir.path(), 8), &bytes[..bytes.len() - 5]).unwrap();
        let recovered = recover(dir.path(), 8).unwrap();
        assert_eq!(recovered.frames, 9);
        assert_eq!(std::fs::metadata(piece_path(dir.path(), 8)).unwrap().len(), recovered.bytes);
        // One killed before its header was complete is an empty piece.
        std::fs::write(part_path(dir.path(), 9), b"FL").unwrap();
        assert_eq!(recover(dir.path(), 9).unwrap().frames, 0);
        let mut found = list(dir.path()).unwrap();
        found.sort_by_key(|f| format!("{f:?}"));
        assert_eq!(found, vec![Found::Marks(7), Found::Piece(7), Found::Piece(8), Found::Piece(9)]);
        // Removing a piece removes its marks.
        remove(dir.path(), Found::Piece(7)).unwrap();
        assert!(!marks_path(dir.path(), 7).exists() && !piece_path(dir.path(), 7).exists());
    }

    /// The offsets of the tags of the FLV file `bytes`.
    fn tag_offsets(bytes: &[u8]) -> Vec<u64> {
        let mut at = flv::FILE_HEADER.len();
        let mut out = Vec::new();
        while at + flv::TAG_HEADER <= bytes.len() {
            let h = flv::TagHeader::parse(bytes[at..at + flv::TAG_HEADER].try_into().unwrap());
            if at as u64 + h.total() > bytes.len() as u64 {
                break;
            }
            out.push(at as u64);
            at += h.total() as usize;
        }
        out
    }

    #[tokio::test]
    async fn every_tag_has_its_mark_record_and_recovery_cuts_them_with_the_piece() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let frames = crate::hls::packager::tests::stream(3);
        let (tx, rx) = mpsc::channel(4);
        let writer = tokio::task::spawn_blocking(move || write_piece(&path, 3, rx));
        for f in &frames {
            tx.send(f.clone()).await.unwrap();
        }
        drop(tx);
        let tally = writer.await.unwrap().unwrap();
        let flv_bytes = std::fs::read(piece_path(dir.path(), 3)).unwrap();
        let marks_bytes = std::fs::read(marks_path(dir.path(), 3)).unwrap();
        assert_eq!(marks_bytes.len() as u64, tally.frames * marks::RECORD as u64);
        let records = marks::decode_all(&marks_bytes, 0);
        let offsets = tag_offsets(&flv_bytes);
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), offsets);
        for (r, f) in records.iter().zip(&frames) {
            assert_eq!((r.mark(), r.header), (f.hls, f.header));
        }
        // Killed mid-tag, with marks written further than the piece (its buffer is
        // flushed on its own) and a torn record: the marks keep the piece's whole tags.
        let cut_at = offsets[40] as usize + 7;
        std::fs::write(part_path(dir.path(), 4), &flv_bytes[..cut_at]).unwrap();
        std::fs::write(marks_path(dir.path(), 4), &marks_bytes[..50 * marks::RECORD + 9]).unwrap();
        let recovered = recover(dir.path(), 4).unwrap();
        assert_eq!(recovered.frames, 40);
        let kept = std::fs::read(marks_path(dir.path(), 4)).unwrap();
        assert_eq!(kept, marks_bytes[..40 * marks::RECORD]);
        // Marks shorter than the piece (not flushed at the kill) are kept whole.
        std::fs::write(part_path(dir.path(), 5), &flv_bytes[..cut_at]).unwrap();
        std::fs::write(marks_path(dir.path(), 5), &marks_bytes[..10 * marks::RECORD + 3]).unwrap();
        recover(dir.path(), 5).unwrap();
        assert_eq!(std::fs::read(marks_path(dir.path(), 5)).unwrap(), marks_bytes[..10 * marks::RECORD]);
        // A piece recovered without marks stays without.
        std::fs::write(part_path(dir.path(), 6), &flv_bytes[..cut_at]).unwrap();
        recover(dir.path(), 6).unwrap();
        assert!(!marks_path(dir.path(), 6).exists());
    }
}
