//! Correct counts awaiting their model owner: a party's shares of each labelled classify
//! request's count, kept under the request id until the model owner fetches it (then
//! forgotten), for at most [`SCORE_LIFETIME`], at most [`MAX_SCORES`] at once (the oldest go
//! first).
//!
//! Each count is also a record `DATA_DIR/scores/<request>.score` ([`crate::service::store`]:
//! atomic, checksummed), so a restarted party still answers for it. Records are written and
//! removed by one background thread in the order the counts change, after the request has
//! answered (a durable write costs two `fsync`s, ~0.7 ms, which stays off the request's
//! latency). The writer gathers the changes of a short grace period (25 ms) first, so a count
//! its model owner fetches at once is neither written nor removed; a party killed within that
//! moment loses the counts not yet written, which the model owner then sees as "no correct
//! count is kept". All records are loaded and checked at start-up; a
//! damaged, foreign or misnamed one is refused (logged with the file and the reason) and moved
//! aside to `<file>.bad`, since one lost count must not keep a party from serving. Ages are
//! wall-clock times (they must survive restarts), so a clock set far forward or back expires
//! counts early or late.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::deploy::Role;
use crate::error::{EngineError, Result};
use crate::service::store::{RecordReader, RecordWriter};

/// Correct counts are kept at most this long for their model owner.
pub const SCORE_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Correct counts kept at most (the oldest are dropped first).
pub const MAX_SCORES: usize = 1 << 20;

const SCORE_KIND: &[u8; 8] = b"score\0\0\0";

/// One kept count: whose it is, this party's share, when it was made.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Score {
    request: u64,
    owner: String,
    /// Seconds since the Unix epoch.
    since: u64,
    #[serde(skip)]
    share: u64,
}

enum Change {
    Keep(Score),
    Forget(u64),
    /// Answer once every change before it is on disk.
    Flush(Sender<()>),
}

/// The correct counts one party keeps (see the module documentation).
pub(crate) struct ScoreBook {
    kept: Mutex<HashMap<u64, Score>>,
    changes: Mutex<Sender<Change>>,
    /// Set once the writer is found gone (logged once).
    writer_lost: AtomicBool,
    /// Set by [`ScoreBook::close`]: later changes stay in memory.
    closed: AtomicBool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn poisoned() -> EngineError {
    EngineError::Protocol("score book poisoned by a panicked request".into())
}

impl ScoreBook {
    /// Party `index`'s counts under `data_dir/scores` (created if missing): every record is
    /// loaded and checked now (a damaged, foreign or misnamed one is logged and moved aside);
    /// expired ones and unfinished writes of an earlier run are removed.
    pub(crate) fn open(data_dir: &Path, index: usize) -> Result<ScoreBook> {
        let dir = data_dir.join("scores");
        let io = |e: std::io::Error| EngineError::Invalid(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut kept = HashMap::new();
        let mut expired = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io)?.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name
                .to_string_lossy()
                .starts_with(RecordWriter::TEMP_PREFIX)
            {
                // A write cut short by a crash (never renamed to its record's name).
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("score") {
                continue;
            }
            let s = match load(&path, index) {
                Ok(s) => s,
                Err(e) => {
                    let aside = path.with_extension("score.bad");
                    let moved = std::fs::rename(&path, &aside);
                    tracing::error!(error = %e, moved_to = %aside.display(), moved = moved.is_ok(), "correct count refused");
                    continue;
                }
            };
            if Duration::from_secs(now().saturating_sub(s.since)) >= SCORE_LIFETIME {
                expired.push(s.request);
            } else {
                kept.insert(s.request, s);
            }
        }
        let (tx, rx) = channel::<Change>();
        let writer_dir = dir.clone();
        std::thread::Builder::new()
            .name("party-scores".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Gather what follows within the grace period: a count fetched at once
                    // (the tutorial's flow) is then neither written nor removed.
                    let mut batch = vec![first];
                    while !matches!(batch.last(), Some(Change::Flush(_))) && batch.len() < 4096 {
                        match rx.recv_timeout(WRITE_GRACE) {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    apply(&writer_dir, index, batch);
                }
            })
            .map_err(|e| EngineError::Invalid(format!("cannot start the score writer: {e}")))?;
        for request in expired {
            let _ = tx.send(Change::Forget(request));
        }
        Ok(ScoreBook {
            kept: Mutex::new(kept),
            changes: Mutex::new(tx),
            writer_lost: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    /// Counts kept now.
    pub(crate) fn len(&self) -> usize {
        self.kept.lock().map(|k| k.len()).unwrap_or(0)
    }

    /// Shutting down: wait (at most 10 s) until every change so far is on disk, then keep
    /// later ones in memory only (so nothing is written while the data directory may be going
    /// away, as an in-process deployment's temporary one does).
    pub(crate) fn close(&self) {
        let (tx, rx) = channel();
        self.change(Change::Flush(tx));
        self.closed.store(true, Ordering::SeqCst);
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            tracing::warn!("correct counts not all persisted before the shutdown");
        }
    }

    fn change(&self, c: Change) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let sent = self.changes.lock().is_ok_and(|tx| tx.send(c).is_ok());
        if !sent && !self.writer_lost.swap(true, Ordering::SeqCst) {
            tracing::error!("the score writer is gone: correct counts are no longer persisted");
        }
    }

    /// Keep this party's `share` of request `request`'s count for model owner `owner`. A
    /// count is never overwritten (a replayed request id cannot change it).
    pub(crate) fn keep(&self, request: u64, owner: &str, share: u64) -> Result<()> {
        let mut kept = self.kept.lock().map_err(|_| poisoned())?;
        let t = now();
        let mut gone: Vec<u64> = kept
            .values()
            .filter(|s| Duration::from_secs(t.saturating_sub(s.since)) >= SCORE_LIFETIME)
            .map(|s| s.request)
            .collect();
        if kept.len() - gone.len() >= MAX_SCORES {
            if let Some(oldest) = kept
                .values()
                .filter(|s| !gone.contains(&s.request))
                .min_by_key(|s| (s.since, s.request))
            {
                gone.push(oldest.request);
            }
        }
        for g in gone {
            kept.remove(&g);
            self.change(Change::Forget(g));
        }
        if let std::collections::hash_map::Entry::Vacant(v) = kept.entry(request) {
            let s = Score {
                request,
                owner: owner.to_string(),
                since: t,
                share,
            };
            self.change(Change::Keep(s.clone()));
            v.insert(s);
        }
        Ok(())
    }

    /// Hand out (and forget) this party's share of request `of`'s count to `role`, which must
    /// be the owner of the request's model.
    pub(crate) fn take(&self, role: &Role, of: u64) -> Result<u64> {
        let mut kept = self.kept.lock().map_err(|_| poisoned())?;
        let Some(s) = kept.get(&of) else {
            return Err(EngineError::Invalid(format!(
                "no correct count is kept for request {of} (unknown, without labels, or already fetched)"
            )));
        };
        if role != &Role::ModelOwner(s.owner.clone()) {
            return Err(EngineError::Refused(format!(
                "the correct count of request {of} is revealed only to its model's owner, not to {role}"
            )));
        }
        let share = kept.remove(&of).expect("checked").share;
        self.change(Change::Forget(of));
        Ok(share)
    }
}

/// How long the writer gathers changes before it writes them (a count fetched within it is
/// never written).
const WRITE_GRACE: Duration = Duration::from_millis(25);

/// Write a batch of changes in order, skipping a count kept and forgotten within the batch.
fn apply(dir: &Path, index: usize, batch: Vec<Change>) {
    let forgotten: std::collections::HashSet<u64> = batch
        .iter()
        .filter_map(|c| match c {
            Change::Forget(r) => Some(*r),
            _ => None,
        })
        .collect();
    let mut written_here = std::collections::HashSet::new();
    for change in batch {
        let r = match change {
            Change::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
            Change::Keep(s) if forgotten.contains(&s.request) => {
                written_here.insert(s.request);
                Ok(())
            }
            Change::Keep(s) => save(dir, index, &s),
            Change::Forget(request) if written_here.contains(&request) => Ok(()),
            Change::Forget(request) => match std::fs::remove_file(path_of(dir, request)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(EngineError::Invalid(format!("cannot remove a score: {e}")))
                }
                _ => Ok(()),
            },
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "correct count not persisted");
        }
    }
}

fn path_of(dir: &Path, request: u64) -> PathBuf {
    dir.join(format!("{request}.score"))
}

fn save(dir: &Path, index: usize, s: &Score) -> Result<()> {
    let mut w = RecordWriter::create(&path_of(dir, s.request), SCORE_KIND)?;
    w.bytes(&[index as u8])?;
    w.bytes(&serde_json::to_vec(s).expect("a score serialises"))?;
    w.words(1, 1, &mut |_, out| {
        out[0] = s.share;
        Ok(())
    })?;
    w.commit()
}

fn load(path: &Path, index: usize) -> Result<Score> {
    let bad = |why: String| EngineError::Format(format!("{}: {why}", path.display()));
    let mut r = RecordReader::open(path, SCORE_KIND)?;
    if r.bytes()? != [index as u8] {
        return Err(bad("this correct count belongs to the other party".into()));
    }
    let mut s: Score = serde_json::from_slice(r.bytes()?)
        .map_err(|e| bad(format!("malformed correct count: {e}")))?;
    let share = r.words()?;
    if share.len() != 1 {
        return Err(bad(format!("{} words for one share", share.len())));
    }
    s.share = share[0];
    r.finish()?;
    if path != path_of(path.parent().unwrap_or(Path::new(".")), s.request) {
        return Err(bad(format!(
            "holds the count of request {}, not the one its name says",
            s.request
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(name: &str) -> Role {
        Role::ModelOwner(name.to_string())
    }

    /// Wait (bounded) until the writer thread has caught up with `want` records on disk.
    fn records_settle(dir: &Path, want: usize) {
        for _ in 0..500 {
            let n = std::fs::read_dir(dir.join("scores"))
                .unwrap()
                .flatten()
                .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("score"))
                .count();
            if n == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the score records never settled at {want}");
    }

    #[test]
    fn counts_survive_a_restart_and_are_handed_out_once_to_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let book = ScoreBook::open(dir.path(), 1).unwrap();
        book.keep(7, "hospital", 42).unwrap();
        book.keep(7, "hospital", 99).unwrap(); // a replay does not overwrite
        book.keep(8, "pharma", u64::MAX).unwrap();
        let e = book.take(&owner("pharma"), 7).unwrap_err().to_string();
        assert!(e.contains("revealed only to its model's owner"), "{e}");
        records_settle(dir.path(), 2);
        drop(book);

        let book = ScoreBook::open(dir.path(), 1).unwrap();
        assert_eq!(book.len(), 2);
        assert_eq!(book.take(&owner("hospital"), 7).unwrap(), 42);
        let e = book.take(&owner("hospital"), 7).unwrap_err().to_string();
        assert!(e.contains("no correct count is kept for request 7"), "{e}");
        records_settle(dir.path(), 1);
        drop(book);

        let book = ScoreBook::open(dir.path(), 1).unwrap();
        assert_eq!(book.take(&owner("pharma"), 8).unwrap(), u64::MAX);
    }

    #[test]
    fn damaged_foreign_and_misnamed_count_records_are_refused_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let book = ScoreBook::open(dir.path(), 0).unwrap();
        book.keep(5, "hospital", 3).unwrap();
        records_settle(dir.path(), 1);
        drop(book);
        let scores = dir.path().join("scores");
        let path = scores.join("5.score");
        let good = std::fs::read(&path).unwrap();
        let refused = |file: &str, bytes: &[u8], party: usize| {
            std::fs::write(scores.join(file), bytes).unwrap();
            let book = ScoreBook::open(dir.path(), party).unwrap();
            assert_eq!(book.len(), 0, "{file} loaded");
            assert!(!scores.join(file).exists(), "{file} left in place");
            let aside = scores.join(format!("{file}.bad"));
            assert_eq!(
                std::fs::read(&aside).unwrap(),
                bytes,
                "{file} not kept aside"
            );
            std::fs::remove_file(aside).unwrap();
        };
        std::fs::remove_file(&path).unwrap();
        // The other party's record; under another request's name; a flipped byte; truncated.
        refused("5.score", &good, 1);
        refused("6.score", &good, 0);
        let mut bad = good.clone();
        bad[40] ^= 1;
        refused("5.score", &bad, 0);
        refused("5.score", &good[..good.len() - 9], 0);
        // An unfinished write of an earlier run is removed; the intact record loads.
        let temp = scores.join(format!("{}crash", RecordWriter::TEMP_PREFIX));
        std::fs::write(&temp, b"half").unwrap();
        std::fs::write(&path, &good).unwrap();
        let book = ScoreBook::open(dir.path(), 0).unwrap();
        assert!(!temp.exists());
        assert_eq!(book.take(&owner("hospital"), 5).unwrap(), 3);
    }

    #[test]
    fn close_persists_what_was_kept_and_writes_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let book = ScoreBook::open(dir.path(), 0).unwrap();
        book.keep(1, "hospital", 10).unwrap();
        book.close();
        assert!(
            dir.path().join("scores/1.score").exists(),
            "not flushed by close"
        );
        book.keep(2, "hospital", 20).unwrap();
        assert_eq!(
            book.take(&owner("hospital"), 2).unwrap(),
            20,
            "kept in memory"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(!dir.path().join("scores/2.score").exists());
    }

    #[test]
    fn expired_counts_are_dropped_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("scores")).unwrap();
        let old = Score {
            request: 9,
            owner: "hospital".into(),
            since: now() - SCORE_LIFETIME.as_secs() - 1,
            share: 1,
        };
        save(&dir.path().join("scores"), 0, &old).unwrap();
        let book = ScoreBook::open(dir.path(), 0).unwrap();
        assert_eq!(book.len(), 0);
        records_settle(dir.path(), 0);
    }
}
