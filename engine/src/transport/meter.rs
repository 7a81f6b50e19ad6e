//! Byte, message and round counting per protocol step.

use std::collections::BTreeMap;

/// Traffic of one protocol step at one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Communication rounds (a send after a receive starts a new round).
    pub rounds: u64,
    /// Messages sent.
    pub messages: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
}

impl StepStats {
    /// Add another step's counts.
    pub fn add(&mut self, o: &StepStats) {
        self.rounds += o.rounds;
        self.messages += o.messages;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
    }
}

/// Traffic of one endpoint, per step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// Counts keyed by step name (e.g. `"matmul"`, `"truncate"`, `"compare"`, `"dealer"`).
    pub steps: BTreeMap<&'static str, StepStats>,
}

impl TrafficStats {
    /// Totals over all steps.
    pub fn total(&self) -> StepStats {
        let mut t = StepStats::default();
        for s in self.steps.values() {
            t.add(s);
        }
        t
    }

    /// Counts for one step (zero if the step never ran).
    pub fn step(&self, name: &str) -> StepStats {
        self.steps.get(name).copied().unwrap_or_default()
    }

    /// Totals over all steps except the dealer's (the online traffic between compute parties).
    pub fn online(&self) -> StepStats {
        let mut t = StepStats::default();
        for (k, s) in &self.steps {
            if *k != "dealer" {
                t.add(s);
            }
        }
        t
    }

    /// `self - earlier`, step by step (for measuring one operation).
    pub fn since(&self, earlier: &TrafficStats) -> TrafficStats {
        let mut out = TrafficStats::default();
        for (k, s) in &self.steps {
            let e = earlier.step(k);
            let d = StepStats {
                rounds: s.rounds - e.rounds,
                messages: s.messages - e.messages,
                bytes_sent: s.bytes_sent - e.bytes_sent,
                bytes_received: s.bytes_received - e.bytes_received,
            };
            if d != StepStats::default() {
                out.steps.insert(k, d);
            }
        }
        out
    }
}

/// The meter an endpoint updates on every send and receive.
#[derive(Clone, Debug)]
pub struct Meter {
    step: &'static str,
    received_since_send: bool,
    stats: TrafficStats,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            step: "other",
            received_since_send: true,
            stats: TrafficStats::default(),
        }
    }
}

impl Meter {
    /// Attribute following traffic to `step`; returns the previous step.
    pub fn set_step(&mut self, step: &'static str) -> &'static str {
        std::mem::replace(&mut self.step, step)
    }

    /// The step traffic is attributed to now.
    pub fn current_step(&self) -> &'static str {
        self.step
    }

    /// Record a sent message of `bytes`.
    pub fn on_send(&mut self, bytes: u64) {
        let s = self.stats.steps.entry(self.step).or_default();
        if self.received_since_send {
            s.rounds += 1;
            self.received_since_send = false;
        }
        s.messages += 1;
        s.bytes_sent += bytes;
    }

    /// Record a received message of `bytes`.
    pub fn on_recv(&mut self, bytes: u64) {
        self.stats
            .steps
            .entry(self.step)
            .or_default()
            .bytes_received += bytes;
        self.received_since_send = true;
    }

    /// Add the counts of another endpoint of the same party (a request's material thread's
    /// dealer traffic), step by step.
    pub fn absorb(&mut self, other: &TrafficStats) {
        for (k, s) in &other.steps {
            self.stats.steps.entry(k).or_default().add(s);
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> &TrafficStats {
        &self.stats
    }
}
