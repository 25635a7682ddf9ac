//! The drops a port counted between two snapshots of its counters, by reason name (shared by
//! the policy tests).

use std::collections::BTreeMap;
use switchyard_dataplane::switch::PortStatsSnapshot;

/// The reasons whose count went up from `before` to `after`, with how much.
pub fn drops_since(before: &PortStatsSnapshot, after: &PortStatsSnapshot) -> BTreeMap<String, u64> {
    after.drops.iter().map(|(&r, &n)| (r.to_string(), n - before.drops[r])).filter(|&(_, n)| n != 0).collect()
}
