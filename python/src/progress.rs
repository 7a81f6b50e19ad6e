//! Progress reports to Python while the engine computes without the GIL: a callable
//! `progress(done, total)`, or a tqdm-like bar (anything with `update(n)`; its `total` is set).

use pyo3::prelude::*;

use crate::errors::bad_input;

/// Where progress goes (see the module documentation); the first exception the callback
/// raised is kept and raised once the engine's call returns.
pub struct Progress {
    target: Option<Py<PyAny>>,
    bar: bool,
    last: usize,
    error: Option<PyErr>,
}

impl Progress {
    /// Check `target` (None, a callable, or a bar with `update`).
    pub fn new(target: Option<Bound<'_, PyAny>>) -> PyResult<Progress> {
        let bar = match &target {
            None => false,
            Some(t) if t.is_none() => false,
            Some(t) if t.hasattr("update")? => true,
            Some(t) if t.is_callable() => false,
            Some(t) => {
                return Err(bad_input(format!(
                    "progress must be a callable (done, total) or a tqdm bar, not {}",
                    t.get_type().name()?
                )))
            }
        };
        Ok(Progress {
            target: target.filter(|t| !t.is_none()).map(Bound::unbind),
            bar,
            last: 0,
            error: None,
        })
    }

    /// Report `done` of `total` (takes the GIL for the call).
    pub fn report(&mut self, done: usize, total: usize) {
        let Some(target) = &self.target else { return };
        if self.error.is_some() {
            return;
        }
        let r = Python::attach(|py| -> PyResult<()> {
            let t = target.bind(py);
            if self.bar {
                if self.last == 0 {
                    t.setattr("total", total)?;
                }
                t.call_method1("update", (done.saturating_sub(self.last),))?;
            } else {
                t.call1((done, total))?;
            }
            Ok(())
        });
        self.last = done;
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    /// The callback's first exception, if it raised one.
    pub fn finish(self) -> PyResult<()> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
