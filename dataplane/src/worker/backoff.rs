//! What a worker does when a poll received nothing: unless busy polling is asked for, it
//! spins until it has received nothing for its spin of TSC time ([`spin_for`]:
//! [`EngineOptions::idle_spin`] when given, else 2 ms for a worker with a queue that cannot
//! wake it cheaply and none for one whose queues are all kernel sockets) -- a
//! sustained idle period, as OVS's `pmd-sleep-max` sleeps only an idle PMD: a gap in a
//! latency-bound loop costs no sleep), then yields, then sleeps (in poll(2) on its queues'
//! wake descriptors when every queue has one, else short sleeps doubling up to
//! [`EngineOptions::max_sleep`]). A worker whose every queue naps while busy
//! ([`naps_for`]: AF_XDP) takes [`NAPS`] timed naps of [`NAP`] instead of the yields: while
//! frames keep coming it is on no wait queue, so their senders pay no wake-ups, and it takes
//! them in bursts. Past the spin (and the naps), a worker whose queues can wake it never
//! sleeps short: a frame that arrives during a timed sleep waits out the rest of it (plus the
//! timer's slack), a frame that arrives during poll(2) wakes the worker at once (a ping every
//! 10 ms through AF_XDP ports, docs/benchmarks.md). Invariant:
//! no sleep lasts longer than `max_sleep` or [`EngineOptions::idle_wait`] (a publish or a stop
//! also wakes a worker sleeping in poll(2)), so a stop request is seen within one bound.

use super::engine::{EngineOptions, Shared};
use super::thread::Worker;
use crate::cpu;
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

/// The spin of a worker that has a queue gaining by it ([`RxQueue::spin_when_idle`]) when
/// [`EngineOptions::idle_spin`] is not given: longer than the gaps of a closed loop whose other
/// end shares a core (benches/vm2vm.sh), short enough that a switch gone idle spends a few per
/// mille of a core per wake-up a second. A worker whose every queue is a kernel socket does
/// not spin: the kernel wakes it on readiness for free, and a spin would take the CPU the
/// kernel needs to deliver the next frame (benches/overlay-compare.sh, docs/benchmarks.md).
///
/// [`RxQueue::spin_when_idle`]: crate::port::RxQueue::spin_when_idle
pub(super) const IDLE_SPIN: Duration = Duration::from_millis(2);

/// The spin of a worker with the queues `spins` says (one bool per queue, whether it gains by
/// spinning): `idle_spin` when given, else [`IDLE_SPIN`] if any queue gains by it, else none.
pub(super) fn spin_for(opts: &EngineOptions, mut spins: impl Iterator<Item = bool>) -> Duration {
    opts.idle_spin.unwrap_or_else(|| if spins.any(|s| s) { IDLE_SPIN } else { Duration::ZERO })
}

/// Whether a worker with the queues `naps` says (one bool per queue,
/// [`RxQueue::nap_while_busy`]) naps instead of yielding: when it has queues and every one
/// says so.
///
/// [`RxQueue::nap_while_busy`]: crate::port::RxQueue::nap_while_busy
pub(super) fn naps_for(naps: impl Iterator<Item = bool>) -> bool {
    let mut any = false;
    for n in naps {
        if !n {
            return false;
        }
        any = true;
    }
    any
}

/// The scheduler's time slice a napping worker asks for ([`cpu::set_slice`]; `None`, the
/// kernel's default, for a worker that does not nap). A nap ends with a wake-up on a core that
/// other processes use meanwhile; with the default slice (1.4 ms on 2 cores) the woken worker
/// waits for the running process's slice to end, up to the next 4 ms tick, while its AF_XDP
/// fill ring (1,024 frames = 2 ms at 500,000 frames/s) runs dry and the kernel drops frames.
/// With a shorter slice than the running process's it preempts it at once (EEVDF, Linux
/// 6.12 on): fewer drops at the same CPU a frame (benches/bridge-compare.sh,
/// docs/benchmarks.md). 100 µs is the kernel's least.
pub(super) fn slice_for(naps: bool) -> Option<Duration> {
    naps.then_some(NAP_SLICE)
}

/// See [`slice_for`].
const NAP_SLICE: Duration = Duration::from_micros(100);

/// Idle polls after the spin spent yielding before sleeping.
const YIELD_POLLS: u32 = 100;

/// A napping worker's naps after its last frame before it sleeps in poll(2): with [`NAP`],
/// half a millisecond (three quarters with the timer's slack) of no frame ends the naps.
pub(super) const NAPS: u32 = 5;

/// One nap (at most [`EngineOptions::max_sleep`]); the timer's slack (50 µs for a normal
/// thread) comes on top. A frame arriving during a nap waits at most that, under load only.
/// Longer naps gather more frames a wake-up: 100 µs took less CPU a frame than 20 or 50 at
/// 200,000 frames/s through AF_XDP ports (docs/perf-log.md).
pub(super) const NAP: Duration = Duration::from_micros(100);

/// What an empty poll leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Busy polling, or within the spin: poll again at once.
    Spin,
    /// Yield the core, then poll.
    Yield,
    /// Sleep this long on a timer, then poll.
    Nap(Duration),
    /// Sleep on the queues (poll(2)), or short growing sleeps where they cannot wake us.
    Wait,
}

/// The first short sleep.
const FIRST_SLEEP: Duration = Duration::from_micros(1);

/// Where a worker is in its idle period.
pub(super) struct Backoff {
    idle_polls: u32,
    sleep: Duration,
    /// The worker's spin ([`spin_for`]) in TSC ticks.
    spin_ticks: u64,
    /// When a poll last received something (TSC).
    last_rx: u64,
    /// Nap instead of yielding ([`naps_for`]).
    naps: bool,
}

impl Backoff {
    /// A back-off that spins for `spin` (see [`spin_for`]) and naps instead of yielding when
    /// `naps` (see [`naps_for`]).
    pub(super) fn new(spin: Duration, naps: bool) -> Backoff {
        let mut b =
            Backoff { idle_polls: 0, sleep: FIRST_SLEEP, spin_ticks: 0, last_rx: cpu::rdtsc(), naps: false };
        b.set_queues(spin, naps);
        b
    }

    /// Changes the spin and the naps (the worker's queues changed).
    pub(super) fn set_queues(&mut self, spin: Duration, naps: bool) {
        self.spin_ticks = (spin.as_nanos() * u128::from(cpu::hz()) / 1_000_000_000) as u64;
        self.naps = naps;
    }

    /// A poll that ended at `now` (TSC) received something: the next idle period starts from
    /// the beginning.
    #[inline]
    pub(super) fn busy(&mut self, now: u64) {
        self.idle_polls = 0;
        self.sleep = FIRST_SLEEP;
        self.last_rx = now;
    }

    /// What a poll that ended at `now` (TSC) and received nothing leads to: spin (busy
    /// polling, or less than the spin since the last frame), then yields or naps, then waits.
    /// Waking from a sleep without a frame does not start the spin (or the naps) again.
    pub(super) fn step(&mut self, opts: &EngineOptions, now: u64) -> Step {
        if opts.busy_poll || now.wrapping_sub(self.last_rx) < self.spin_ticks {
            return Step::Spin;
        }
        self.idle_polls = self.idle_polls.saturating_add(1);
        if self.naps {
            if self.idle_polls <= NAPS {
                return Step::Nap(NAP.min(opts.max_sleep));
            }
        } else if self.idle_polls < YIELD_POLLS {
            return Step::Yield;
        }
        Step::Wait
    }

    /// Does what [`Backoff::step`] says. `wait` sleeps on the queues for at most the time
    /// given and says whether it could. Returns false when it only spun (no back-off, so no
    /// time to count as backing off).
    #[inline]
    pub(super) fn idle(
        &mut self,
        opts: &EngineOptions,
        now: u64,
        wait: impl FnOnce(Duration) -> bool,
    ) -> bool {
        match self.step(opts, now) {
            Step::Spin => {
                std::hint::spin_loop();
                return false;
            }
            Step::Yield => std::thread::yield_now(),
            Step::Nap(d) => std::thread::sleep(d),
            Step::Wait => {
                if !wait(opts.idle_wait) {
                    // Queues that cannot wake us: short, growing sleeps.
                    std::thread::sleep(self.sleep);
                    self.sleep = (self.sleep * 2).min(opts.max_sleep);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(idle_spin: Duration) -> EngineOptions {
        EngineOptions { idle_spin: Some(idle_spin), ..EngineOptions::default() }
    }

    /// Not given, the spin follows the worker's queues: 2 ms when one gains by spinning, none
    /// when all are kernel sockets (or there are none); given, it holds whatever the queues.
    #[test]
    fn the_spin_follows_the_queues_unless_given() {
        let auto = EngineOptions::default();
        assert_eq!(auto.idle_spin, None);
        assert_eq!(spin_for(&auto, [false, true, false].into_iter()), IDLE_SPIN);
        assert_eq!(spin_for(&auto, [false, false].into_iter()), Duration::ZERO);
        assert_eq!(spin_for(&auto, std::iter::empty()), Duration::ZERO);
        let given = opts(Duration::from_micros(50));
        assert_eq!(spin_for(&given, [false].into_iter()), Duration::from_micros(50));
        assert_eq!(spin_for(&opts(Duration::ZERO), [true].into_iter()), Duration::ZERO);
    }

    /// A worker naps only when it has queues and every one naps while busy.
    #[test]
    fn naps_only_when_every_queue_naps() {
        assert!(naps_for([true, true].into_iter()));
        assert!(!naps_for([true, false, true].into_iter()));
        assert!(!naps_for([false].into_iter()));
        assert!(!naps_for(std::iter::empty()));
    }

    /// A napping worker, past its spin: NAPS naps (no yield, no poll(2)) after a frame, then
    /// poll(2) on every empty poll, also after waking from one without a frame; a frame starts
    /// the naps again. The nap is bounded by `max_sleep`; busy polling never naps; a worker
    /// that does not nap yields before it waits, as before. No timing: the steps are compared.
    #[test]
    fn naps_while_frames_come_then_sleeps_in_poll() {
        let zero = opts(Duration::ZERO);
        let now = cpu::rdtsc();
        let mut b = Backoff::new(Duration::ZERO, true);
        b.busy(now);
        let steps: Vec<Step> = (1..=u64::from(NAPS) + 3).map(|i| b.step(&zero, now + i)).collect();
        let mut want = vec![Step::Nap(NAP); NAPS as usize];
        want.extend([Step::Wait; 3]);
        assert_eq!(steps, want);
        b.busy(now + 100);
        assert_eq!(b.step(&zero, now + 101), Step::Nap(NAP), "a frame starts the naps again");

        let short = EngineOptions { max_sleep: Duration::from_micros(30), ..opts(Duration::ZERO) };
        assert_eq!(b.step(&short, now + 102), Step::Nap(Duration::from_micros(30)), "bounded by max_sleep");

        // With a spin, the naps come after it.
        let hour = opts(Duration::from_secs(3600));
        let mut b = Backoff::new(Duration::from_secs(3600), true);
        b.busy(now);
        assert_eq!(b.step(&hour, now + 1), Step::Spin);
        assert_eq!(b.step(&hour, now + 2 * 3600 * cpu::hz()), Step::Nap(NAP));

        let busy = EngineOptions { busy_poll: true, ..zero.clone() };
        let mut b = Backoff::new(Duration::ZERO, true);
        assert_eq!(b.step(&busy, now + u64::MAX / 2), Step::Spin, "busy polling never naps");

        let mut b = Backoff::new(Duration::ZERO, false);
        b.busy(now);
        assert_eq!(b.step(&zero, now + 1), Step::Yield, "no naps: yields first");
        let mut b = Backoff::new(Duration::ZERO, false);
        b.set_queues(Duration::ZERO, true);
        b.busy(now);
        assert_eq!(b.step(&zero, now + 1), Step::Nap(NAP), "the queues changed: naps");
    }

    /// Within `idle_spin` of the last frame an empty poll only spins (no yield, no sleep);
    /// after it the worker backs off, and waking from a sleep without a frame does not start
    /// the spin again. No timing: the TSC values are given, the spans are 0 or an hour.
    #[test]
    fn spins_only_until_the_idle_period_is_sustained() {
        let hour = opts(Duration::from_secs(3600));
        let mut b = Backoff::new(Duration::from_secs(3600), false);
        let now = cpu::rdtsc();
        b.busy(now);
        let mut waited = false;
        for i in 0..10_000u64 {
            assert!(
                !b.idle(&hour, now + i, |_| {
                    waited = true;
                    true
                }),
                "a gap in a loop backs off"
            );
        }
        assert!(!waited);
        // An hour later with nothing received: it backs off, and keeps backing off (sleeping
        // in poll(2) once past the yields) instead of spinning again after each wake-up.
        let later = now + 2 * 3600 * cpu::hz();
        for i in 0..u64::from(YIELD_POLLS) + 4 {
            assert!(b.idle(&hour, later + i, |_| true), "a sustained idle period backs off");
        }

        let zero = opts(Duration::ZERO);
        let mut b = Backoff::new(Duration::ZERO, false);
        b.busy(now);
        let mut waits = 0;
        // Empty polls 1 to YIELD_POLLS - 1 yield, the rest wait in poll(2): no short sleeps
        // (a frame arriving in one would wait for its end) when the queues can wake us.
        for i in 0..u64::from(YIELD_POLLS) + 4 {
            assert!(
                b.idle(&zero, now + i, |_| {
                    waits += 1;
                    true
                }),
                "idle: backs off"
            );
        }
        assert_eq!(waits, 5, "poll(2) right after the yields, every time after that");
        b.busy(now + 1000);
        waits = 0;
        assert!(b.idle(&zero, now + 1001, |_| {
            waits += 1;
            true
        }));
        assert_eq!(waits, 0, "a frame starts the back-off from the beginning");

        let busy = EngineOptions { busy_poll: true, ..zero };
        let mut b = Backoff::new(Duration::ZERO, false);
        assert!(!b.idle(&busy, now + u64::MAX / 2, |_| unreachable!()), "busy polling never backs off");
    }
}
