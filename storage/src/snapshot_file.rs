//! The stored snapshot: one file, written as a stream and read back without a copy of
//! it in memory.
//!
//! Layout (the same bytes since the first release: bincode of a struct
//! `{ meta, sha256: Vec<u8>, data: Vec<u8> }`):
//!
//! ```text
//! meta (bincode SnapshotMeta) | varint 32 | SHA-256 of data (32 bytes) | varint len(data) | data
//! ```
//!
//! `data` is the encoded state (what openraft sends to followers) and runs to the end of
//! the file, so a [`SnapshotData`] window over it is the snapshot openraft reads. The
//! digest comes before the data it covers: the writer leaves it zero, hashes the data as
//! it goes, and fills it in before the file is synced and renamed into place. A file is
//! only ever under its final name complete and fsynced, as before.
//!
//! Everything here blocks: call it on tokio's blocking pool.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use raftcast_raft::rpc::{decode_from, encode_into, encoded_len};
use raftcast_raft::typ::SnapshotMeta;
use sha2::{Digest, Sha256};

/// The current snapshot's file name in the snapshot directory.
pub const SNAPSHOT_FILE: &str = "current.snap";

/// Buffer between the encoder and the file: the only copy of snapshot bytes in memory.
const IO_BUFFER: usize = 64 * 1024;

/// Length of the digest, and its bincode length prefix (a one-byte varint).
const DIGEST_LEN: usize = 32;

/// What precedes the data in a snapshot file.
#[derive(Debug)]
pub struct Header {
    pub meta: SnapshotMeta,
    /// Where the data starts in the file; it runs to the end.
    pub data_start: u64,
    pub data_len: u64,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Writes a snapshot of `meta` whose data is exactly `len` bytes, written by
/// `write_data`, durably: a temporary file, fsync, rename over [`SNAPSHOT_FILE`], fsync
/// of the directory. Returns the file, positioned at the data, and where the data starts.
/// Callers serialize writes into one directory (the temporary name is fixed).
pub fn write(
    dir: &Path,
    meta: &SnapshotMeta,
    len: u64,
    write_data: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<(File, u64)> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let file = File::options().read(true).write(true).create(true).truncate(true).open(&tmp)?;
    let mut out = BufWriter::with_capacity(IO_BUFFER, file);
    let meta_len = encode_into(meta, &mut out)? as u64;
    // `Vec<u8>`'s varint length (one byte for 32), then the digest, zero for now.
    let digest_at = meta_len + 1;
    let mut header_rest = encode_into(&vec![0u8; DIGEST_LEN], &mut out)? as u64;
    header_rest += encode_into(&len, &mut out)? as u64;
    let data_start = meta_len + header_rest;
    let mut hashing = Hashing { out: &mut out, hasher: Sha256::new(), written: 0 };
    write_data(&mut hashing)?;
    let Hashing { hasher, written, .. } = hashing;
    if written != len {
        return Err(invalid(format!("snapshot data came to {written} bytes, {len} announced")));
    }
    let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.seek(SeekFrom::Start(digest_at))?;
    file.write_all(&hasher.finalize())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    crate::sync::fsync(dir)?;
    file.seek(SeekFrom::Start(data_start))?;
    Ok((file, data_start))
}

/// How many bytes [`write`] needs announced for `value` encoded as the data.
pub fn data_len<T: serde::Serialize>(value: &T) -> u64 {
    encoded_len(value) as u64
}

/// Feeds every byte written to a hash on its way out.
struct Hashing<W> {
    out: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Opens the snapshot in `dir` and checks it: its header decodes, its data has the
/// announced length and digest. Returns `None` when there is none; a file that exists
/// but does not check is an error, never ignored. The file is positioned at the data.
pub fn open(dir: &Path) -> Result<Option<(File, Header)>, String> {
    let path = dir.join(SNAPSHOT_FILE);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let header = check(&mut file).map_err(|e| format!("{} {e}", path.display()))?;
    Ok(Some((file, header)))
}

fn check(file: &mut File) -> Result<Header, String> {
    let file_len = file.metadata().map_err(|e| format!("cannot be read: {e}"))?.len();
    let mut input = Counting { input: BufReader::with_capacity(IO_BUFFER, &mut *file), read: 0 };
    let undecodable = |e| format!("does not decode: {e}");
    let meta: SnapshotMeta = decode_from(&mut input).map_err(undecodable)?;
    let sha256: Vec<u8> = decode_from(&mut input).map_err(undecodable)?;
    let data_len: u64 = decode_from(&mut input).map_err(undecodable)?;
    let data_start = input.read;
    drop(input);
    if data_start.checked_add(data_len) != Some(file_len) {
        return Err(format!("does not decode: {data_len} bytes of data announced, {} there", file_len - data_start));
    }
    file.seek(SeekFrom::Start(data_start)).map_err(|e| format!("cannot be read: {e}"))?;
    let mut hasher = Sha256::new();
    let copied = io::copy(&mut (&mut *file).take(data_len), &mut HashSink(&mut hasher))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if copied != data_len || hasher.finalize().as_slice() != sha256.as_slice() {
        return Err("fails its checksum".into());
    }
    file.seek(SeekFrom::Start(data_start)).map_err(|e| format!("cannot be read: {e}"))?;
    Ok(Header { meta, data_start, data_len })
}

/// Counts the bytes a decoder consumed (so the data's offset is known).
struct Counting<R> {
    input: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A buffered reader of the `len` bytes of `file` from `start` (through a second handle:
/// the caller's position moves with it).
pub fn window(file: &File, start: u64, len: u64) -> io::Result<impl Read> {
    let mut handle = file.try_clone()?;
    handle.seek(SeekFrom::Start(start))?;
    Ok(BufReader::with_capacity(IO_BUFFER, handle.take(len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftcast_raft::rpc::encode;
    use serde::Serialize;

    /// The layout as the first release wrote it: one bincode struct.
    #[derive(Serialize)]
    struct SnapshotFile {
        meta: SnapshotMeta,
        sha256: Vec<u8>,
        data: Vec<u8>,
    }

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42)),
            last_membership: Default::default(),
            snapshot_id: "3-42-1".into(),
        }
    }

    #[test]
    fn a_streamed_snapshot_is_byte_for_byte_the_struct_layout() {
        let dir = tempfile::tempdir().unwrap();
        for data in [Vec::new(), b"abc".to_vec(), vec![7u8; 70_000]] {
            let (mut file, start) = write(dir.path(), &meta(), data.len() as u64, |out| out.write_all(&data)).unwrap();
            let sha256 = Sha256::digest(&data).to_vec();
            let expected = encode(&SnapshotFile { meta: meta(), sha256, data: data.clone() });
            assert_eq!(std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap(), expected);
            let mut rest = Vec::new();
            file.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, data, "the returned file is positioned at the data");
            let (_, header) = open(dir.path()).unwrap().unwrap();
            assert_eq!((header.data_start, header.data_len), (start, data.len() as u64));
            assert_eq!(header.meta.snapshot_id, "3-42-1");
        }
    }

    #[test]
    fn data_of_another_length_than_announced_is_refused_and_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), &meta(), 4, |out| out.write_all(b"abc")).is_err());
        assert!(open(dir.path()).unwrap().is_none());
    }

    #[test]
    fn truncated_or_extended_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &meta(), 3, |out| out.write_all(b"abc")).unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(open(dir.path()).is_err());
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(open(dir.path()).is_err());
        let mut flipped = good;
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(open(dir.path()).unwrap_err().contains("checksum"));
    }
}
