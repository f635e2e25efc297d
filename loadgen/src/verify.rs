//! `pushscope verify`: replays the `--log-dir` logs of a load run (see
//! `oplog`) and compares msg_id sets per subscriber: every message published
//! on its channel between its baseline and the last judged seq must have
//! arrived exactly once (copies of messages below the baseline, history
//! replays and other runs' frames are not judged, as in `SubAcct`).
//! Optionally compares the publish log with a server-side list of ids
//! (`<run>-<msg_id>` as sent in `X-Msg-Id`; other runs' ids are counted
//! apart). Prints lost / duplicated / unexpected ids.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    io::BufRead,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "cannot read {path}: {source}: pass the directory given to `pushscope load --log-dir`"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: malformed record `{text}`")]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("{0} holds no recv-*.log files: was the load run with --log-dir?")]
    NoReceiveLogs(PathBuf),
}

#[derive(Debug, Default)]
pub struct VerifyResult {
    /// Run id from the publish log's `run` line (None: a log without one).
    pub run: Option<u32>,
    pub published: usize,
    pub subscribers: usize,
    pub expected: u64,
    pub received: u64,
    /// (subscriber, msg_id)
    pub lost: Vec<(u64, u64)>,
    /// (subscriber, msg_id, times received)
    pub duplicated: Vec<(u64, u64, u64)>,
    /// (subscriber, msg_id) received more than once only because the publisher re-posted it.
    pub republished: Vec<(u64, u64)>,
    /// (subscriber, msg_id) received but never published on its channel.
    pub unexpected: Vec<(u64, u64)>,
    /// Published but absent from the server's list.
    pub server_missing: Vec<u64>,
    /// In the server's list but never published.
    pub server_unexpected: Vec<u64>,
    /// Ids of other runs in the server's list (not this run's business).
    pub server_other_runs: u64,
    /// Frames logged as history replay (`y`) and as other runs' (`f`).
    pub replayed: u64,
    pub foreign: u64,
    /// Reconnects logged (`R`): sessions that resumed.
    pub resumes: u64,
}

impl VerifyResult {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.server_missing.is_empty()
            && self.server_unexpected.is_empty()
    }

    pub fn render(&self) -> String {
        const LIMIT: usize = 1000;
        let mut s = String::new();
        let run = self.run.map_or("-".to_string(), |r| r.to_string());
        let _ = writeln!(
            s,
            "verify: run {run}: {} published, {} subscribers, {} expected deliveries, {} received ({} replayed, {} of other runs not judged), {} reconnects",
            self.published, self.subscribers, self.expected, self.received, self.replayed, self.foreign, self.resumes
        );
        fn list<T>(s: &mut String, items: &[T], f: impl Fn(&T) -> String) {
            for it in items.iter().take(LIMIT) {
                s.push_str(&f(it));
                s.push('\n');
            }
            if items.len() > LIMIT {
                let _ = writeln!(s, "… and {} more", items.len() - LIMIT);
            }
        }
        list(&mut s, &self.lost, |(sub, id)| {
            format!("lost msg_id={id} subscriber={sub}")
        });
        list(&mut s, &self.duplicated, |(sub, id, n)| {
            format!("duplicated msg_id={id} subscriber={sub} received={n}")
        });
        list(&mut s, &self.unexpected, |(sub, id)| {
            format!("unexpected msg_id={id} subscriber={sub}")
        });
        list(&mut s, &self.server_missing, |id| {
            format!("server missing msg_id={id}")
        });
        list(&mut s, &self.server_unexpected, |id| {
            format!("server unexpected msg_id={id}")
        });
        let _ = writeln!(
            s,
            "verdict: {} ({} lost, {} duplicated, {} unexpected, {} missing on server, {} unexpected on server)",
            if self.is_clean() { "CONSISTENT" } else { "MISMATCH" },
            self.lost.len(),
            self.duplicated.len(),
            self.unexpected.len(),
            self.server_missing.len(),
            self.server_unexpected.len()
        );
        s
    }
}

fn lines(path: &Path) -> Result<impl Iterator<Item = (usize, String)>, VerifyError> {
    let f = std::fs::File::open(path).map_err(|source| VerifyError::Read {
        path: path.into(),
        source,
    })?;
    Ok(std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .enumerate()
        .map(|(i, l)| (i + 1, l)))
}

struct Sub {
    channel: u32,
    baseline: Option<u64>,
    judged_to: u64,
}

pub fn verify(dir: &Path, server_ids: Option<&Path>) -> Result<VerifyResult, VerifyError> {
    let bad = |path: &Path, line: usize, text: &str| VerifyError::Malformed {
        path: path.into(),
        line,
        text: text.into(),
    };
    // channel → pseq → msg_id; msg_id → (channel, pseq)
    let mut by_channel: HashMap<u32, BTreeMap<u64, u64>> = HashMap::new();
    let mut channel_of: HashMap<u64, (u32, u64)> = HashMap::new();
    let mut run: Option<u32> = None;
    let pub_path = dir.join("publish.log");
    for (n, l) in lines(&pub_path)? {
        let f: Vec<&str> = l.split(' ').collect();
        let parse = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        match (f.first(), parse(1), parse(2), parse(3)) {
            (Some(&"run"), Some(r), None, None) if n == 1 && f.len() == 2 => {
                run = Some(u32::try_from(r).map_err(|_| bad(&pub_path, n, &l))?);
            }
            (Some(&"p"), Some(id), Some(ch), Some(pseq)) => {
                let ch = u32::try_from(ch).map_err(|_| bad(&pub_path, n, &l))?;
                by_channel.entry(ch).or_default().insert(pseq, id);
                channel_of.insert(id, (ch, pseq));
            }
            _ => return Err(bad(&pub_path, n, &l)),
        }
    }
    let mut recv_files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| VerifyError::Read {
            path: dir.into(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("recv-") && n.ends_with(".log"))
        })
        .collect();
    recv_files.sort();
    if recv_files.is_empty() {
        return Err(VerifyError::NoReceiveLogs(dir.into()));
    }
    // subscriber → msg_id → (copies, copies from re-posts)
    let mut got: HashMap<u64, HashMap<u64, (u64, u64)>> = HashMap::new();
    let mut subs: BTreeMap<u64, Sub> = BTreeMap::new();
    let mut result = VerifyResult {
        run,
        published: channel_of.len(),
        ..Default::default()
    };
    for path in &recv_files {
        for (n, l) in lines(path)? {
            let f: Vec<&str> = l.split(' ').collect();
            let parse = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            match (f.first(), parse(1), parse(2)) {
                (Some(&"r"), Some(sub), Some(id)) => {
                    let e = got.entry(sub).or_default().entry(id).or_default();
                    e.0 += 1;
                    e.1 += u64::from(parse(3).is_some_and(|a| a > 0));
                    result.received += 1;
                }
                (Some(&"a"), Some(_), Some(_)) => {}
                // The resume point (a seq, an event id or `-`) is not judged.
                (Some(&"R"), Some(_), Some(_)) if f.len() == 4 && !f[3].is_empty() => {
                    result.resumes += 1
                }
                (Some(&"y"), Some(_), Some(_)) => result.replayed += 1,
                (Some(&"f"), Some(_), Some(_)) if parse(3).is_some() => result.foreign += 1,
                (Some(&"s"), Some(sub), Some(ch)) => {
                    let baseline = f.get(3).and_then(|v| v.parse().ok());
                    let judged_to = parse(4).ok_or_else(|| bad(path, n, &l))?;
                    let channel = u32::try_from(ch).map_err(|_| bad(path, n, &l))?;
                    subs.insert(
                        sub,
                        Sub {
                            channel,
                            baseline,
                            judged_to,
                        },
                    );
                }
                _ => return Err(bad(path, n, &l)),
            }
        }
    }
    result.subscribers = subs.len();
    let empty = BTreeMap::new();
    for (&sub, s) in &subs {
        let published = by_channel.get(&s.channel).unwrap_or(&empty);
        let mine = got.remove(&sub).unwrap_or_default();
        // A subscriber that never received anything can have been judged
        // up to below its baseline: then nothing was expected of it.
        if let Some(b) = s.baseline.filter(|&b| b <= s.judged_to) {
            for (_, &id) in published.range(b..=s.judged_to) {
                result.expected += 1;
                if !mine.contains_key(&id) {
                    result.lost.push((sub, id));
                }
            }
        }
        let mut ids: Vec<_> = mine.into_iter().collect();
        ids.sort_unstable();
        for (id, (count, reposted)) in ids {
            let Some(&(_, pseq)) = channel_of.get(&id).filter(|(ch, _)| *ch == s.channel) else {
                result.unexpected.push((sub, id));
                continue;
            };
            if s.baseline.is_none_or(|b| pseq < b) {
                // Below what this subscriber had to see: not judged.
                continue;
            }
            if count - reposted.min(count - 1) > 1 {
                result.duplicated.push((sub, id, count));
            } else if count > 1 {
                result.republished.push((sub, id));
            }
        }
    }
    // Frames logged by subscribers that never wrote their `s` record.
    for (sub, ids) in got {
        for id in ids.into_keys() {
            if !channel_of.contains_key(&id) {
                result.unexpected.push((sub, id));
            }
        }
    }
    if let Some(path) = server_ids {
        let mut server = BTreeSet::new();
        for (n, l) in lines(path)? {
            let t = l.trim();
            if t.is_empty() {
                continue;
            }
            // `<run>-<msg_id>` as sent; a bare number is a msg_id (logs
            // without a run line).
            let id = match crate::marker::parse_wire_id(t) {
                Some((r, id)) if Some(r) == run || run.is_none() => id,
                Some(_) => {
                    result.server_other_runs += 1;
                    continue;
                }
                None => t.parse::<u64>().map_err(|_| bad(path, n, &l))?,
            };
            server.insert(id);
        }
        let published: BTreeSet<u64> = channel_of.keys().copied().collect();
        result.server_missing = published.difference(&server).copied().collect();
        result.server_unexpected = server.difference(&published).copied().collect();
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lost_duplicated_unexpected_and_server_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pubs: String = (1..=6).map(|i| format!("p {i} 0 {i} 100 {i}\n")).collect();
        std::fs::write(d.join("publish.log"), pubs).unwrap();
        // Subscriber 7 expects pseq 2..=6: misses 4, gets 5 twice, and 99 was
        // never published; 3 also comes from the publisher's re-post (not a
        // server duplicate).
        std::fs::write(
            d.join("recv-0-0.log"),
            "r 7 2\nr 7 3\nR 7 1000 3\nr 7 3 1\nr 7 5\nr 7 5\na 7 5\nr 7 6\nR 7 2000 -\nr 7 99\ns 7 0 2 6\n",
        )
        .unwrap();
        std::fs::write(d.join("server.txt"), "1\n2\n3\n4\n5\n42\n").unwrap();
        let r = verify(d, Some(&d.join("server.txt"))).unwrap();
        assert_eq!(r.lost, vec![(7, 4)]);
        assert_eq!(r.duplicated, vec![(7, 5, 2)]);
        assert_eq!(r.republished, vec![(7, 3)]);
        assert_eq!(r.unexpected, vec![(7, 99)]);
        assert_eq!(r.server_missing, vec![6]);
        assert_eq!(r.server_unexpected, vec![42]);
        assert_eq!(r.expected, 5);
        assert_eq!(r.resumes, 2);
        assert!(!r.is_clean());
        assert!(r.render().contains("lost msg_id=4 subscriber=7"));
    }

    #[test]
    fn a_subscriber_judged_below_its_baseline_expects_nothing() {
        // Upgraded late, received nothing, judged to 3 while its baseline
        // is 9 (most upgrades refused): used to panic on an inverted range.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pubs: String = (1..=12).map(|i| format!("p {i} 0 {i} 100 -\n")).collect();
        std::fs::write(d.join("publish.log"), format!("run 5\n{pubs}")).unwrap();
        std::fs::write(
            d.join("recv-0-0.log"),
            "y 1 2\nf 1 4 3\ns 1 0 9 3\ns 2 0 - 0\n",
        )
        .unwrap();
        std::fs::write(d.join("ids.txt"), "5-1\n4-1\n").unwrap();
        let r = verify(d, Some(&d.join("ids.txt"))).unwrap();
        assert_eq!((r.expected, r.lost.len(), r.subscribers), (0, 0, 2));
        assert_eq!((r.replayed, r.foreign, r.run), (1, 1, Some(5)));
        assert_eq!(r.server_other_runs, 1, "run 4's id is not this run's");
        assert_eq!(r.server_missing.len(), 11);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_logs_never_panic(publog in "([pyfsarR]|run)( [0-9-]{0,21}){0,6}(\n([pyfsarR]|run)( [0-9-]{0,21}){0,6}){0,8}",
                                      recv in "([pyfsarR]|run)( [0-9-]{0,21}){0,6}(\n([pyfsarR]|run)( [0-9-]{0,21}){0,6}){0,8}",
                                      ids in "[0-9-]{0,22}(\n[0-9-]{0,22}){0,4}") {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            std::fs::write(d.join("publish.log"), &publog).unwrap();
            std::fs::write(d.join("recv-0-0.log"), &recv).unwrap();
            std::fs::write(d.join("ids.txt"), &ids).unwrap();
            if let Ok(r) = verify(d, Some(&d.join("ids.txt"))) {
                let _ = r.render();
            }
        }
    }
}
