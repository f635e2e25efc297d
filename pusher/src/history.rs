//! The pusher's history id: names the seq numbering a subscriber's
//! `last_seq` belongs to (like Kafka's leader epoch or Redis' replication
//! id). With `--data-dir` it is created once and kept in `DIR/HISTORY`
//! (seqs there are durable and continue across restarts); without one,
//! every start is a new history, since its seqs begin at 1 again. A resume
//! naming another history replays everything retained instead of trusting
//! a `last_seq` of another numbering.

use std::{
    fs::{self, File},
    io::Write,
    path::Path,
};

use anyhow::{anyhow, Context, Result};

/// Length of a history id: 16 lowercase hex digits (64 random bits).
pub const LEN: usize = 16;
/// File of the history id in the data dir.
pub const FILE: &str = "HISTORY";

/// Whether `s` has the form of a history id (what `&history=` must carry).
pub fn valid(s: &str) -> bool {
    s.len() == LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new random history id, from getrandom(2).
pub fn random() -> Result<String> {
    let mut b = [0u8; 8];
    let mut filled = 0;
    // Bounded: getrandom(2) returns at most a short count for 8 bytes only
    // when interrupted by a signal.
    for _ in 0..16 {
        // SAFETY: writes at most `b.len() - filled` bytes into `b[filled..]`.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(anyhow!("getrandom failed: {e}"));
        }
        filled += n as usize;
        if filled == b.len() {
            return Ok(format!("{:016x}", u64::from_be_bytes(b)));
        }
    }
    Err(anyhow!("getrandom kept being interrupted"))
}

/// The history id of `data_dir`: read from `DIR/HISTORY`, or created there
/// (written to a temporary file, synced, renamed, directory synced) when
/// absent. A file that is not a history id is an error saying what to do.
pub fn load_or_create(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim_end_matches('\n');
            if !valid(id) {
                return Err(anyhow!(
                    "{} does not hold a history id ({LEN} lowercase hex digits): restore it, or delete it to start a new history (subscribers then replay everything retained)",
                    path.display()
                ));
            }
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = random()?;
            let tmp = data_dir.join(format!("{FILE}.tmp"));
            let mut f =
                File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            f.write_all(format!("{id}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            fs::rename(&tmp, &path)
                .with_context(|| format!("cannot rename {} to {FILE}", tmp.display()))?;
            File::open(data_dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}", data_dir.display()))?;
            Ok(id)
        }
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_valid_and_differ() {
        let a = random().unwrap();
        let b = random().unwrap();
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn validity() {
        assert!(valid("0123456789abcdef"));
        assert!(!valid("0123456789ABCDEF"));
        assert!(!valid("0123456789abcde"));
        assert!(!valid("0123456789abcdef0"));
        assert!(!valid("0123456789abcdeg"));
        assert!(!valid(""));
    }

    #[test]
    fn a_data_dir_keeps_its_history() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create(d.path()).unwrap();
        assert_eq!(load_or_create(d.path()).unwrap(), a);
        assert_eq!(
            fs::read_to_string(d.path().join(FILE)).unwrap(),
            format!("{a}\n")
        );
        assert!(!d.path().join("HISTORY.tmp").exists());
        fs::write(d.path().join(FILE), "not an id\n").unwrap();
        let e = load_or_create(d.path()).unwrap_err().to_string();
        assert!(e.contains("delete it to start a new history"), "{e}");
    }
}
