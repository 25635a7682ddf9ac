//! The wall time of a reconcile's phases, kept with its result ([`crate::runtime::Applied`])
//! so that the benchmarks can say where the time of a change goes.

use std::time::{Duration, Instant};

/// The wall time of the phases of one reconcile, in the order they ran.
#[derive(Debug, Clone, Default)]
pub struct Phases {
    pub spans: Vec<(&'static str, Duration)>,
    last: Option<Instant>,
}

impl Phases {
    /// Starts timing the first phase now.
    pub fn start() -> Phases {
        Phases { spans: Vec::new(), last: Some(Instant::now()) }
    }

    /// Ends the running phase as `name` and starts the next.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        let d = self.last.map_or(Duration::ZERO, |l| now - l);
        self.spans.push((name, d));
        self.last = Some(now);
    }

    /// `before`'s phases, then these.
    pub fn after(mut self, mut before: Phases) -> Phases {
        before.spans.append(&mut self.spans);
        Phases { spans: before.spans, last: self.last }
    }
}
