//! The loss and duplicates an in-memory reference pusher's kill and
//! restart must cost a load run, predicted from the run's operation logs
//! (`--log-dir`: publish.log and recv-*.log, see loadgen/src/oplog.rs).

use std::path::Path;

/// What the logs say an in-memory pusher's restart must cost each
/// subscriber. The restarted pusher is a new history and numbers every
/// channel from seq 1 again; a subscriber's first session on it resumes
/// with `last_seq = L` (its `R` line in recv-*.log), the highest seq it got
/// from the old pusher, and the old pusher's history id, so the new pusher
/// replays everything it retains. Hence (1) old messages above L
/// (accepted, never delivered, not persisted) are gone, and nothing else:
/// every message the new pusher accepted arrives; (2) a message the old
/// pusher committed and pushed to some subscribers just before SIGKILL, but
/// never answered, was re-posted by the publisher and accepted by the new
/// pusher (publish.log holds only that answer, a new seq): the subscribers
/// that got it from the old pusher get it twice, the others once.
///
/// L can exceed the highest old seq publish.log shows the subscriber got,
/// by exactly the number of those re-accepted messages it got before
/// resuming (it got old seqs up to L without gaps): the model checks that.
#[derive(Debug)]
pub struct Predicted {
    pub undelivered: u64,
    /// Messages received twice: (subscriber, msg id) pairs.
    pub duplicated: u64,
    pub per_subscriber: Vec<u64>,
    /// Subscribers that resumed above the old seqs publish.log shows
    /// them: they got a message the old pusher never answered.
    pub resumed_past_answered: u64,
    /// As summary.json `lost_ids` writes them.
    pub ids: std::collections::BTreeSet<String>,
}

/// `Err` names a loss, a duplicate or a resume point the logs do not explain.
pub fn predicted_loss(logs: &Path, killed_at_ns: u64) -> Result<Predicted, String> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    // msg_id -> (channel, server seq, which pusher: 0 old, 1 restarted)
    let mut published: BTreeMap<u64, (u64, u64, u32)> = BTreeMap::new();
    let mut last: HashMap<u64, (u64, u32)> = HashMap::new();
    for line in std::fs::read_to_string(logs.join("publish.log"))
        .unwrap()
        .lines()
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"p") {
            continue;
        }
        let (id, ch): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let seq: u64 = f[5].parse().expect("the pusher answers with a seq");
        let e = last.entry(ch).or_insert((0, 0));
        if seq <= e.0 {
            e.1 += 1; // numbering restarted: the new pusher
        }
        e.0 = seq;
        published.insert(id, (ch, seq, e.1));
    }
    assert!(
        last.values().all(|(_, era)| *era == 1),
        "every channel's numbering restarted once: {last:?}"
    );
    /// One subscriber's receive log, in its order.
    #[derive(Default)]
    struct Sub {
        /// msg id -> times received.
        got: BTreeMap<u64, u64>,
        /// Received before its first resume after the kill (old pusher).
        before_resume: Vec<u64>,
        /// `last_seq` of its first resume after the kill.
        resume: Option<u64>,
        channel: Option<u64>,
    }
    let mut subs: BTreeMap<u64, Sub> = BTreeMap::new();
    for e in std::fs::read_dir(logs).unwrap() {
        let path = e.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("recv-")
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(sub) = f.get(1).and_then(|v| v.parse::<u64>().ok()) else {
                continue;
            };
            let s = subs.entry(sub).or_default();
            match f[0] {
                "r" => {
                    let id = f[2].parse().unwrap();
                    *s.got.entry(id).or_default() += 1;
                    if s.resume.is_none() {
                        s.before_resume.push(id);
                    }
                }
                "R" if s.resume.is_none() && f[2].parse::<u64>().unwrap() >= killed_at_ns => {
                    s.resume = Some(f[3].parse().expect("a pushscope resume names a last_seq"));
                }
                "s" => s.channel = Some(f[2].parse().unwrap()),
                _ => {}
            }
        }
    }
    let mut p = Predicted {
        undelivered: 0,
        duplicated: 0,
        per_subscriber: Vec::new(),
        resumed_past_answered: 0,
        ids: BTreeSet::new(),
    };
    for (sub, s) in &subs {
        let ch = s.channel.expect("every subscriber's summary line");
        let resume_at = s
            .resume
            .ok_or(format!("subscriber {sub} never resumed after the kill"))?;
        // What publish.log says it got from the old pusher.
        let old = s
            .before_resume
            .iter()
            .filter_map(|id| Some((*id, published.get(id)?)));
        let answered_max = old
            .clone()
            .filter(|(_, (_, _, era))| *era == 0)
            .map(|(_, (_, seq, _))| *seq)
            .max()
            .unwrap_or(0);
        let reaccepted: BTreeSet<u64> = old
            .filter(|(_, (_, _, era))| *era == 1)
            .map(|(id, _)| id)
            .collect();
        if resume_at != answered_max + reaccepted.len() as u64 {
            return Err(format!(
                "subscriber {sub} resumed with last_seq {resume_at}: the old pusher's answers show \
                 {answered_max}, plus {} messages it got that the new pusher accepted",
                reaccepted.len()
            ));
        }
        p.resumed_past_answered += u64::from(!reaccepted.is_empty());
        // Received twice: exactly the re-accepted ones it had already.
        let twice: BTreeSet<u64> = s
            .got
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect();
        if twice != reaccepted {
            return Err(format!(
                "subscriber {sub} got msg_ids {twice:?} twice, the new pusher re-accepted {reaccepted:?} it had"
            ));
        }
        p.duplicated += twice.len() as u64;
        let mut n = 0;
        for (id, (c, seq, era)) in &published {
            if *c != ch || s.got.contains_key(id) {
                continue;
            }
            if *era != 0 || *seq <= resume_at {
                return Err(format!(
                    "subscriber {sub} lost msg_id {id} (seq {seq}, pusher {era}), which no resume explains"
                ));
            }
            p.undelivered += 1;
            n += 1;
            p.ids.insert(format!("msg_id {id} (subscriber {sub})"));
        }
        p.per_subscriber.push(n);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model on logs shaped like a failing run's: the old pusher answered
    /// msgs 1-3 (its seqs 1-3) and pushed msg 4 (its seq 4) to subscriber 0
    /// only before it was killed, unanswered; the publisher re-posted msg 4 and
    /// the new pusher gave it seq 1 (msgs 5, 6: seqs 2, 3). Subscriber 0
    /// resumed with last_seq 4 (one past its last answered seq) and got the
    /// new history replayed: msg 4 twice. Subscriber 1 (a reconnect to the old
    /// pusher before the kill, then last_seq 2) never got old seq 3: lost.
    #[test]
    fn the_loss_model_follows_a_resume_past_the_last_answered_seq() {
        let logs = tempfile::tempdir().unwrap();
        let d = logs.path();
        std::fs::write(
            d.join("publish.log"),
            "run 7\np 1 0 1 100 1\np 2 0 2 200 2\np 3 0 3 300 3\np 4 0 4 400 1\np 5 0 5 500 2\np 6 0 6 600 3\n",
        )
        .unwrap();
        let recv = |resume_0: u64, sub1_after: &str| {
            format!(
                "r 0 1\nr 1 1\nR 1 500 1\nr 0 2\nr 1 2\nr 0 3\nr 0 4\nR 0 1000 {resume_0}\nR 1 1001 2\n\
                 a 0 3\nr 0 4 1\nr 0 5\nr 0 6\n{sub1_after}s 0 0 1 6\ns 1 0 1 6\n"
            )
        };
        let all = "r 1 4 1\nr 1 5\nr 1 6\n";
        std::fs::write(d.join("recv-0-0.log"), recv(4, all)).unwrap();
        let p = predicted_loss(d, 900).unwrap();
        assert_eq!(
            (p.undelivered, p.duplicated, p.resumed_past_answered),
            (1, 1, 1)
        );
        assert_eq!(p.per_subscriber, vec![0, 1]);
        let ids: Vec<&str> = p.ids.iter().map(String::as_str).collect();
        assert_eq!(ids, ["msg_id 3 (subscriber 1)"]);
        // A resume point the logs cannot explain is a failure, not a fit.
        std::fs::write(d.join("recv-0-0.log"), recv(5, all)).unwrap();
        let why = predicted_loss(d, 900).unwrap_err();
        assert!(why.contains("resumed with last_seq 5"), "{why}");
        // ...and so is one below what the subscriber got (seq 4 of msg 4).
        std::fs::write(d.join("recv-0-0.log"), recv(3, all)).unwrap();
        let why = predicted_loss(d, 900).unwrap_err();
        assert!(why.contains("resumed with last_seq 3"), "{why}");
        // A message of the new pusher missing (skipped by a resume) is no fit.
        std::fs::write(d.join("recv-0-0.log"), recv(4, "r 1 5\nr 1 6\n")).unwrap();
        let why = predicted_loss(d, 900).unwrap_err();
        assert!(why.contains("lost msg_id 4 (seq 1, pusher 1)"), "{why}");
        // Nor is a duplicate no re-post explains.
        std::fs::write(
            d.join("recv-0-0.log"),
            recv(4, "r 1 4 1\nr 1 5\nr 1 5\nr 1 6\n"),
        )
        .unwrap();
        let why = predicted_loss(d, 900).unwrap_err();
        assert!(why.contains("subscriber 1 got msg_ids {5} twice"), "{why}");
    }
}
