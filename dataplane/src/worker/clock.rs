//! The clock of learning and aging: whole seconds since the engine started, from the TSC.
//! Invariant: [`SecondClock::at`] returns exactly what [`seconds_at`] computes, for every
//! input, while dividing only once a second.

/// Whole seconds from TSC value `start` to `tsc` at `hz` ticks a second.
#[inline]
pub(super) fn seconds_at(start: u64, hz: u64, tsc: u64) -> u32 {
    (tsc.wrapping_sub(start) / hz.max(1)) as u32
}

/// A worker's view of the engine's clock, from the TSC value its loop reads anyway: the
/// division is done once a second, not once per poll. The range in which the cached second
/// holds is kept as offsets from the start (as the division sees the TSC), so it is exact for
/// every input, a TSC value just below the start (another core's skew) included.
pub(super) struct SecondClock {
    now: u32,
    /// The offsets from the start in which `now` holds: [from, until).
    from: u64,
    until: u64,
}

impl SecondClock {
    pub(super) const UNSET: SecondClock = SecondClock { now: 0, from: u64::MAX, until: 0 };

    /// [`seconds_at`]`(start, hz, tsc)`.
    #[inline]
    pub(super) fn at(&mut self, start: u64, hz: u64, tsc: u64) -> u32 {
        let off = tsc.wrapping_sub(start);
        if off < self.from || off >= self.until {
            let hz = hz.max(1);
            let q = off / hz;
            self.now = q as u32;
            self.from = q * hz;
            self.until = self.from.saturating_add(hz);
        }
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_clock_agrees_with_the_division() {
        // A TSC below and above 2^32 Hz, none, and one tick a second.
        for hz in [2_596_000_000u64, 5_000_000_000, 0, 1] {
            let start = 1_000_003u64;
            let mut clock = SecondClock::UNSET;
            // Just below the start (another core's skew), then forwards by uneven steps across
            // many second boundaries, exactly on them, and back.
            let mut ticks = vec![start - 1, start, start + 1000, start + hz / 2, start - 1];
            ticks.extend((0..4000u64).map(|i| start + i * 7_919_113 * 3));
            ticks.extend((0..5).map(|s| start + s * hz));
            ticks.extend((1..5).map(|s| start + s * hz - 1));
            ticks.extend([start + 10 * hz, start + 2 * hz, start, start + 30 * hz + 5, u64::MAX, 0]);
            for t in ticks {
                assert_eq!(clock.at(start, hz, t), seconds_at(start, hz, t), "hz {hz} tsc {t}");
            }
        }
    }
}
