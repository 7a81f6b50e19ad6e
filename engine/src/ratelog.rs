//! Log lines for events a peer can repeat at will (refused connections, refused requests),
//! rate-limited: the first event of each kind in an interval is logged in full, the others are
//! counted, and one summary line per kind says how many there were when the interval ends.
//!
//! A flood of refusals therefore costs a few lines per kind and interval, however fast it comes
//! (issue 18: reconnect churn once made a party write 286,776 warnings in 25 s). Summaries are
//! written by a thread that lives only while events are being counted and while the log itself
//! is in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Kinds tracked at most; events of further kinds share one entry.
const MAX_KINDS: usize = 256;

/// The shared entry of kinds past [`MAX_KINDS`].
const OTHER: &str = "other refusals";

struct Entry {
    /// When this kind's current interval began.
    since: Instant,
    /// Events of this kind counted (not logged) in the current interval.
    suppressed: u64,
}

struct Inner {
    interval: Duration,
    kinds: Mutex<HashMap<String, Entry>>,
    /// Whether a summary thread runs now.
    flushing: Mutex<bool>,
}

/// A rate-limited log (see the module documentation). Clones share their counts.
#[derive(Clone)]
pub struct RateLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RateLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLog")
            .field("interval", &self.inner.interval)
            .finish()
    }
}

impl RateLog {
    /// A log that writes at most one full line and one summary line per kind and `interval`.
    pub fn new(interval: Duration) -> RateLog {
        RateLog {
            inner: Arc::new(Inner {
                interval: interval.max(Duration::from_millis(10)),
                kinds: Mutex::new(HashMap::new()),
                flushing: Mutex::new(false),
            }),
        }
    }

    /// The interval of the summaries.
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// Note one event of `kind`; returns whether the caller logs it in full now (the first of
    /// its kind in the interval). Otherwise it is counted for the interval's summary line.
    pub fn admit(&self, kind: &str) -> bool {
        let Ok(mut kinds) = self.inner.kinds.lock() else {
            return true;
        };
        let key = if kinds.contains_key(kind) || kinds.len() < MAX_KINDS {
            kind
        } else {
            OTHER
        };
        let now = Instant::now();
        match kinds.get_mut(key) {
            Some(e) if now.duration_since(e.since) < self.inner.interval => {
                e.suppressed += 1;
                drop(kinds);
                self.start_flusher();
                false
            }
            Some(e) => {
                // A new interval: the previous one's count was summarised by the flusher (or
                // is summarised now, if it had no chance yet).
                if e.suppressed > 0 {
                    summary(key, e.suppressed, self.inner.interval);
                }
                *e = Entry {
                    since: now,
                    suppressed: 0,
                };
                true
            }
            None => {
                kinds.insert(
                    key.to_string(),
                    Entry {
                        since: now,
                        suppressed: 0,
                    },
                );
                true
            }
        }
    }

    /// Start the summary thread unless it runs: it writes each kind's summary when its interval
    /// ends, and stops once nothing is counted (or the log is dropped).
    fn start_flusher(&self) {
        {
            let Ok(mut f) = self.inner.flushing.lock() else {
                return;
            };
            if *f {
                return;
            }
            *f = true;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let tick = (self.inner.interval / 4).max(Duration::from_millis(5));
        let spawned = std::thread::Builder::new()
            .name("rate-log".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let Some(inner) = weak.upgrade() else { return };
                let Ok(mut kinds) = inner.kinds.lock() else {
                    return;
                };
                let now = Instant::now();
                let mut counting = false;
                kinds.retain(|kind, e| {
                    if now.duration_since(e.since) >= inner.interval {
                        if e.suppressed > 0 {
                            summary(kind, e.suppressed, inner.interval);
                        }
                        // Forgotten: the next event of this kind is logged in full.
                        return false;
                    }
                    counting |= e.suppressed > 0;
                    true
                });
                if !counting {
                    if let Ok(mut f) = inner.flushing.lock() {
                        *f = false;
                    }
                    return;
                }
            });
        if spawned.is_err() {
            if let Ok(mut f) = self.inner.flushing.lock() {
                *f = false;
            }
        }
    }
}

fn summary(kind: &str, count: u64, interval: Duration) {
    tracing::warn!(
        kind,
        more = count,
        interval_s = interval.as_secs_f64(),
        "repeated: {count} more like the line logged for this kind in the last {:.0} s (one summary per interval)",
        interval.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_and_interval() {
        let log = RateLog::new(Duration::from_millis(200));
        assert!(log.admit("a"));
        assert!(log.admit("b"));
        for _ in 0..1000 {
            assert!(!log.admit("a"));
        }
        std::thread::sleep(Duration::from_millis(350));
        // The interval ended: the next one is logged in full again.
        assert!(log.admit("a"));
        assert!(!log.admit("a"));
    }

    #[test]
    fn kinds_past_the_limit_share_one_entry() {
        let log = RateLog::new(Duration::from_secs(60));
        for i in 0..MAX_KINDS {
            assert!(log.admit(&format!("k{i}")));
        }
        assert!(log.admit("new one"), "the shared entry's first event");
        assert!(!log.admit("another new one"));
    }
}
