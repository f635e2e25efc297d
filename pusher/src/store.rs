//! On-disk log of one channel: append-only segment files of length+CRC
//! framed records. Opening a log scans every segment, truncates a torn or
//! corrupt tail of the newest segment to its last whole record (and reports
//! it), and yields the records so the server can rebuild its replay window
//! and continue the seq numbering after the highest seq ever written.
//!
//! Layout: `<channel dir>/<first seq, 20 digits>.log`, each starting with the
//! 8-byte magic [`MAGIC`], then records:
//!
//! ```text
//! u32 LE  payload length (10 + id length + data length)
//! u32 LE  CRC-32 (IEEE) of the payload
//! payload: u64 LE seq | u16 LE id length | id bytes | data bytes
//! ```

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use crate::config::{MAX_BODY, MAX_MSG_ID};

/// First bytes of every segment; the trailing digit is the format version.
pub const MAGIC: &[u8; 8] = b"PSCPLOG1";
const HEADER: usize = 8;
const PAYLOAD_FIXED: usize = 10;
const MAX_PAYLOAD: usize = PAYLOAD_FIXED + MAX_MSG_ID + MAX_BODY;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub id: String,
    pub data: Vec<u8>,
}

/// Appends the framed record to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, seq: u64, id: &str, data: &[u8]) {
    let id = &id.as_bytes()[..id.len().min(u16::MAX as usize)];
    let payload_len = PAYLOAD_FIXED + id.len() + data.len();
    let start = buf.len();
    buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(id.len() as u16).to_le_bytes());
    buf.extend_from_slice(id);
    buf.extend_from_slice(data);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why decoding stopped before the end of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The file ends inside a record (crash mid-write).
    Torn,
    /// A length out of bounds, a CRC mismatch, or a seq not above the previous one.
    Corrupt(&'static str),
}

/// Decodes whole records from `bytes` (after the header); returns them, the
/// offset just past the last whole valid record and the damage found, if any.
pub fn decode_records(bytes: &[u8], mut prev_seq: u64) -> (Vec<Record>, usize, Option<Damage>) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            return (out, pos, None);
        }
        if rest.len() < 8 {
            return (out, pos, Some(Damage::Torn));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
        if !(PAYLOAD_FIXED..=MAX_PAYLOAD).contains(&len) {
            return (
                out,
                pos,
                Some(Damage::Corrupt("record length out of bounds")),
            );
        }
        if rest.len() < 8 + len {
            return (out, pos, Some(Damage::Torn));
        }
        let payload = &rest[8..8 + len];
        if crc32fast::hash(payload) != crc {
            return (out, pos, Some(Damage::Corrupt("CRC mismatch")));
        }
        let seq = u64::from_le_bytes(payload[0..8].try_into().unwrap());
        let id_len = u16::from_le_bytes(payload[8..10].try_into().unwrap()) as usize;
        if PAYLOAD_FIXED + id_len > len {
            return (out, pos, Some(Damage::Corrupt("id length out of bounds")));
        }
        if seq <= prev_seq {
            return (out, pos, Some(Damage::Corrupt("seq not increasing")));
        }
        let Ok(id) = std::str::from_utf8(&payload[10..10 + id_len]) else {
            return (out, pos, Some(Damage::Corrupt("id is not UTF-8")));
        };
        out.push(Record {
            seq,
            id: id.to_string(),
            data: payload[10 + id_len..].to_vec(),
        });
        prev_seq = seq;
        pos += 8 + len;
    }
}

#[derive(Debug)]
struct Segment {
    base_seq: u64,
    path: PathBuf,
    /// Highest seq stored in it (0 if none).
    last_seq: u64,
}

/// What opening a log found and repaired, for stderr and tests.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub records: Vec<Record>,
    /// One sentence per repaired segment.
    pub repairs: Vec<String>,
}

/// The append side of one channel's log.
#[derive(Debug)]
pub struct ChannelLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    active: File,
    active_len: u64,
    segment_bytes: u64,
    /// The next seq to assign: above every seq ever written here.
    pub next_seq: u64,
}

fn segment_name(base_seq: u64) -> String {
    format!("{base_seq:020}.log")
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

impl ChannelLog {
    /// Opens (or creates) the log in `dir`, repairing a torn tail.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(ChannelLog, OpenReport), StoreError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut bases: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err("listing", dir))?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".log")?;
                (stem.len() == 20).then(|| stem.parse().ok())?
            })
            .collect();
        bases.sort_unstable();
        let mut report = OpenReport::default();
        let mut segments = Vec::new();
        let mut prev_seq = 0u64;
        let n = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let path = dir.join(segment_name(base));
            let is_last = i + 1 == n;
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err("reading", &path))?;
            let header_ok = bytes.len() >= HEADER && &bytes[..HEADER] == MAGIC;
            let (records, valid, damage) = if header_ok {
                decode_records(&bytes[HEADER..], prev_seq)
            } else if bytes.len() < HEADER && MAGIC.starts_with(&bytes) {
                (Vec::new(), 0, (!bytes.is_empty()).then_some(Damage::Torn))
            } else {
                (Vec::new(), 0, Some(Damage::Corrupt("bad segment header")))
            };
            let last_seq = records.last().map_or(0, |r| r.seq);
            if let Some(damage) = damage {
                let what = match damage {
                    Damage::Torn => "a torn tail".to_string(),
                    Damage::Corrupt(why) => format!("corruption ({why})"),
                };
                let dropped = bytes.len() - HEADER.min(bytes.len()) - valid;
                if is_last {
                    // Crash mid-write: keep the whole records, drop the rest,
                    // so new appends start on a record boundary.
                    let keep = (HEADER + valid) as u64;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err("opening", &path))?;
                    if !header_ok {
                        (&f).write_all(MAGIC).map_err(io_err("writing", &path))?;
                    }
                    f.set_len(keep).map_err(io_err("truncating", &path))?;
                    f.sync_all().map_err(io_err("syncing", &path))?;
                    report.repairs.push(format!(
                        "{}: found {what} after {} whole records (last seq {}); truncated {dropped} bytes to the last whole record",
                        path.display(),
                        records.len(),
                        last_seq.max(prev_seq)
                    ));
                } else {
                    // Not the tail: later segments are intact, keep them and
                    // the seq numbering above them; the damaged bytes are lost.
                    report.repairs.push(format!(
                        "{}: found {what} after {} whole records; {dropped} bytes unreadable, later segments kept",
                        path.display(),
                        records.len()
                    ));
                }
            }
            prev_seq = prev_seq.max(last_seq);
            segments.push(Segment {
                base_seq: base,
                path,
                last_seq,
            });
            report.records.extend(records);
        }
        // A segment's name is the seq it was opened for: never go below it,
        // even if its records were all lost.
        let next_seq = segments
            .iter()
            .map(|s| s.base_seq.max(s.last_seq + 1))
            .max()
            .unwrap_or(1)
            .max(prev_seq + 1);
        let (active, active_len) = match segments.last() {
            Some(s) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .map_err(io_err("opening", &s.path))?;
                let len = f.metadata().map_err(io_err("stat", &s.path))?.len();
                (f, len)
            }
            None => {
                let (f, seg) = Self::create_segment(dir, next_seq)?;
                segments.push(seg);
                (f, HEADER as u64)
            }
        };
        Ok((
            ChannelLog {
                dir: dir.to_path_buf(),
                segments,
                active,
                active_len,
                segment_bytes: segment_bytes.max(4096),
                next_seq,
            },
            report,
        ))
    }

    fn create_segment(dir: &Path, base_seq: u64) -> Result<(File, Segment), StoreError> {
        let path = dir.join(segment_name(base_seq));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        f.write_all(MAGIC).map_err(io_err("writing", &path))?;
        f.sync_all().map_err(io_err("syncing", &path))?;
        drop(f);
        sync_dir(dir)?;
        let f = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        Ok((
            f,
            Segment {
                base_seq,
                path,
                last_seq: 0,
            },
        ))
    }

    /// Appends already-encoded records whose seqs run up to `last_seq`
    /// (`first_seq` is the first of them, used to name a new segment). On
    /// failure the file is cut back to its previous length, so the log never
    /// holds half a batch the server did not acknowledge.
    pub fn append(&mut self, buf: &[u8], first_seq: u64, last_seq: u64) -> Result<(), StoreError> {
        if self.active_len >= self.segment_bytes {
            let (f, seg) = Self::create_segment(&self.dir, first_seq)?;
            self.active = f;
            self.active_len = HEADER as u64;
            self.segments.push(seg);
        }
        if let Err(e) = self.active.write_all(buf) {
            let _ = self.active.set_len(self.active_len);
            let path = &self.segments.last().expect("active segment").path;
            return Err(io_err("appending to", path)(e));
        }
        self.active_len += buf.len() as u64;
        self.segments.last_mut().expect("active segment").last_seq = last_seq;
        Ok(())
    }

    /// fdatasync of the active segment.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        let path = &self.segments.last().expect("active segment").path;
        self.active.sync_data().map_err(io_err("syncing", path))
    }

    /// Deletes whole segments holding only seqs below `first_kept`; the
    /// active segment always stays. Returns the number deleted.
    pub fn retain_from(&mut self, first_kept: u64) -> usize {
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let s = &self.segments[0];
            if s.last_seq >= first_kept {
                break;
            }
            if let Err(e) = fs::remove_file(&s.path) {
                log::warn!("retention: cannot delete {}: {e}", s.path.display());
                break;
            }
            self.segments.remove(0);
            deleted += 1;
        }
        deleted
    }

    /// Number of segment files (for tests).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_all(log: &mut ChannelLog, msgs: &[(&str, &[u8])]) -> Vec<u64> {
        let mut seqs = Vec::new();
        for (id, data) in msgs {
            let mut buf = Vec::new();
            let seq = log.next_seq;
            encode_record(&mut buf, seq, id, data);
            log.append(&buf, seq, seq).unwrap();
            log.next_seq += 1;
            seqs.push(seq);
        }
        log.sync().unwrap();
        seqs
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v.pop().unwrap()
    }

    #[test]
    fn roundtrip_and_seq_continues() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, rep) = ChannelLog::open(d.path(), 1 << 20).unwrap();
        assert!(rep.records.is_empty());
        assert_eq!(log.next_seq, 1);
        append_all(&mut log, &[("a", b"one"), ("b", b"two"), ("c", b"")]);
        drop(log);
        let (log, rep) = ChannelLog::open(d.path(), 1 << 20).unwrap();
        assert!(rep.repairs.is_empty(), "{:?}", rep.repairs);
        let got: Vec<_> = rep.records.iter().map(|r| (r.seq, r.id.as_str())).collect();
        assert_eq!(got, [(1, "a"), (2, "b"), (3, "c")]);
        assert_eq!(rep.records[1].data, b"two");
        assert_eq!(log.next_seq, 4);
    }

    #[test]
    fn torn_tail_is_truncated_to_last_whole_record() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = ChannelLog::open(d.path(), 1 << 20).unwrap();
        append_all(&mut log, &[("a", b"one"), ("b", b"two")]);
        drop(log);
        let seg = only_segment(d.path());
        let whole = fs::metadata(&seg).unwrap().len();
        // A third record cut in the middle, as a crash mid-write leaves it.
        let mut rec = Vec::new();
        encode_record(&mut rec, 3, "c", b"three");
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&rec[..rec.len() - 3]).unwrap();
        drop(f);
        let (mut log, rep) = ChannelLog::open(d.path(), 1 << 20).unwrap();
        assert_eq!(rep.records.len(), 2);
        assert_eq!(rep.repairs.len(), 1);
        assert!(rep.repairs[0].contains("torn tail"), "{}", rep.repairs[0]);
        assert_eq!(fs::metadata(&seg).unwrap().len(), whole);
        // The torn seq 3 was never acknowledged; appends resume cleanly.
        assert_eq!(log.next_seq, 3);
        append_all(&mut log, &[("c2", b"again")]);
        drop(log);
        let (_, rep) = ChannelLog::open(d.path(), 1 << 20).unwrap();
        assert!(rep.repairs.is_empty());
        assert_eq!(rep.records.last().unwrap().id, "c2");
    }

    #[test]
    fn corrupt_crc_in_tail_is_cut_there() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = ChannelLog::open(d.path(), 1 << 20).unwrap();
        append_all(&mut log, &[("a", b"one"), ("b", b"two"), ("c", b"three")]);
        drop(log);
        let seg = only_segment(d.path());
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff; // last data byte of seq 3
        fs::write(&seg, &bytes).unwrap();
        let (log, rep) = ChannelLog::open(d.path(), 1 << 20).unwrap();
        assert_eq!(rep.records.len(), 2);
        assert!(
            rep.repairs[0].contains("CRC mismatch"),
            "{}",
            rep.repairs[0]
        );
        assert_eq!(log.next_seq, 3);
    }

    #[test]
    fn torn_header_and_garbage_never_panic() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(segment_name(7)), &MAGIC[..3]).unwrap();
        let (log, rep) = ChannelLog::open(d.path(), 1 << 20).unwrap();
        assert_eq!(log.next_seq, 7, "a segment's base seq is never reused");
        assert_eq!(rep.repairs.len(), 1);
        drop(log);
        let mut junk = MAGIC.to_vec();
        junk.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8));
        fs::write(d.path().join(segment_name(7)), &junk).unwrap();
        let (log, rep) = ChannelLog::open(d.path(), 1 << 20).unwrap();
        assert_eq!(log.next_seq, 7);
        assert!(rep.records.is_empty());
    }

    #[test]
    fn segments_roll_and_retention_deletes_old_ones() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = ChannelLog::open(d.path(), 4096).unwrap();
        let body = vec![b'x'; 1000];
        for _ in 0..20 {
            append_all(&mut log, &[("m", &body)]);
        }
        assert!(log.segment_count() >= 4, "{}", log.segment_count());
        let before = log.segment_count();
        assert!(log.retain_from(15) > 0);
        assert!(log.segment_count() < before);
        drop(log);
        let (log, rep) = ChannelLog::open(d.path(), 4096).unwrap();
        assert_eq!(log.next_seq, 21);
        let first = rep.records.first().unwrap().seq;
        assert!(first <= 15 && first > 1, "first kept {first}");
        let seqs: Vec<u64> = rep.records.iter().map(|r| r.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn seqs_continue_after_retention_emptied_everything_but_active() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = ChannelLog::open(d.path(), 4096).unwrap();
        let body = vec![b'y'; 3000];
        for _ in 0..6 {
            append_all(&mut log, &[("m", &body)]);
        }
        log.retain_from(u64::MAX);
        assert_eq!(log.segment_count(), 1);
        drop(log);
        let (log, _) = ChannelLog::open(d.path(), 4096).unwrap();
        assert_eq!(log.next_seq, 7);
    }
}
