//! Points in the services' work where a test may hold a worker, to force an interleaving that
//! load produces only rarely (issue: material made ahead under concurrent load). Nothing is
//! ever installed outside tests: [`Hooks::at`] is then one atomic load.

use std::sync::{Arc, OnceLock};

/// A point in a service's work (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HookPoint {
    /// The dealer received a party's join of a request (0 alice, 1 bob) and is about to pair it.
    DealerJoin {
        /// The request.
        request: u64,
        /// 0 alice, 1 bob.
        party: usize,
    },
    /// The dealer finished bob's part of a request (his end arrived and was answered).
    DealerEnded {
        /// The request.
        request: u64,
    },
}

/// A test's hook: called at every [`HookPoint`] on the worker's own thread.
pub(crate) type Hook = Arc<dyn Fn(HookPoint) + Send + Sync>;

/// The hook of one service (unset outside tests).
#[derive(Default)]
pub(crate) struct Hooks(OnceLock<Hook>);

impl Hooks {
    /// Install a test's hook (once; a second is ignored).
    #[cfg(test)]
    pub(crate) fn set(&self, hook: Hook) {
        let _ = self.0.set(hook);
    }

    /// Let a test's hook hold this worker at `point`.
    pub(crate) fn at(&self, point: HookPoint) {
        if let Some(h) = self.0.get() {
            h(point);
        }
    }
}
