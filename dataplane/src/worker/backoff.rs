//! What a worker does when a poll received nothing: unless busy polling is asked for, it
//! spins, then yields, then sleeps (in poll(2) on its queues' wake descriptors when every
//! queue has one, else short sleeps doubling up to [`EngineOptions::max_sleep`]). Invariant:
//! no sleep lasts longer than `max_sleep` or [`EngineOptions::idle_wait`] (a publish or a stop
//! also wakes a worker sleeping in poll(2)), so a stop request is seen within one bound.

use super::engine::{EngineOptions, Shared};
use super::thread::Worker;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::os::fd::AsFd;
use std::time::Duration;

/// The longest a worker sleeps in poll(2) before it looks at the stop flag and the plan again
/// (publish and stop also wake it at once), unless [`EngineOptions::idle_wait`] says otherwise.
pub(super) const IDLE_WAIT: Duration = Duration::from_millis(100);

/// A worker with more RX queues than this backs off with short sleeps instead of poll(2)
/// over all their descriptors. Sleeping in poll(2) is far cheaper than polling every queue:
/// with 500 idle AF_PACKET ports the process used 45% of a core at a limit of 256 (short
/// sleeps) and 11% with this one (benches/afpacket-scale.sh, docs/benchmarks.md).
const MAX_SLEEP_QUEUES: usize = 4096;

/// Idle polls spent spinning, then yielding, then sleeping short before sleeping in poll(2).
const SPIN_POLLS: u32 = 2000;
const YIELD_POLLS: u32 = 2100;
const SHORT_SLEEP_POLLS: u32 = 2200;

/// The first short sleep.
const FIRST_SLEEP: Duration = Duration::from_micros(1);

/// Where a worker is in its idle period.
pub(super) struct Backoff {
    idle_polls: u32,
    sleep: Duration,
}

impl Backoff {
    pub(super) const fn new() -> Backoff {
        Backoff { idle_polls: 0, sleep: FIRST_SLEEP }
    }

    /// A poll received something: the next idle period starts from the beginning.
    #[inline]
    pub(super) fn busy(&mut self) {
        self.idle_polls = 0;
        self.sleep = FIRST_SLEEP;
    }

    /// A poll received nothing: spins, yields or sleeps. `wait` sleeps on the queues for at
    /// most the time given and says whether it could. Returns false when it only spun for busy
    /// polling (no back-off, so no time to count as backing off).
    #[inline]
    pub(super) fn idle(&mut self, opts: &EngineOptions, wait: impl FnOnce(Duration) -> bool) -> bool {
        if opts.busy_poll {
            std::hint::spin_loop();
            return false;
        }
        self.idle_polls = self.idle_polls.saturating_add(1);
        if self.idle_polls < SPIN_POLLS {
            std::hint::spin_loop();
        } else if self.idle_polls < YIELD_POLLS {
            std::thread::yield_now();
        } else if self.idle_polls < SHORT_SLEEP_POLLS || !wait(opts.idle_wait) {
            // Queues that cannot wake us (or a short grace period): short, growing sleeps.
            std::thread::sleep(self.sleep);
            self.sleep = (self.sleep * 2).min(opts.max_sleep);
        }
        true
    }
}

impl Worker {
    /// Sleeps in poll(2) on every RX queue's wake descriptor and this worker's own eventfd,
    /// for at most `timeout`. Returns false without sleeping when some queue cannot be waited
    /// on (no descriptor, or still to be opened) or already has frames.
    pub(super) fn sleep_on_queues(&mut self, sh: &Shared, timeout: Duration) -> bool {
        if !self.rx_pending.is_empty()
            || self.plan.mode.generates()
            || self.rx.len() > MAX_SLEEP_QUEUES
            || self.rx.iter().any(|s| s.handle.wake_fd().is_none())
        {
            return false;
        }
        let mut armed = 0;
        let mut ok = true;
        for s in self.rx.iter_mut() {
            if !s.handle.arm_wakeup() {
                ok = false;
                break;
            }
            armed += 1;
        }
        if ok {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(self.rx.len() + 1);
            for s in &self.rx {
                if let Some(fd) = s.handle.wake_fd() {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
            }
            if let Some(w) = &sh.wakers[self.idx] {
                fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
            }
            let ms = timeout.as_millis().min(u128::from(u16::MAX)) as u16;
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
        }
        for s in self.rx.iter_mut().take(armed) {
            s.handle.disarm_wakeup();
        }
        if let Some(w) = &sh.wakers[self.idx] {
            let _ = w.read();
        }
        true
    }
}
