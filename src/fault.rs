//! Named fault seams: the moments where a crash hurts most, which a test
//! can stop the process at, every run, instead of hoping a random SIGKILL
//! lands there.
//!
//! `FERRY_FAILPOINT=NAME` (or `NAME:N` for the N-th time it is reached)
//! makes the process exit at once, without cleanup, as a crash would: the
//! kernel closes its connections and nothing else happens. Unset, a seam
//! costs one comparison.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// After the target committed a batch, before the source hears of it.
pub const AFTER_TARGET_COMMIT: &str = "after-target-commit";
/// In the middle of the initial copy of a table.
pub const DURING_SNAPSHOT_COPY: &str = "during-snapshot-copy";
/// After another connection of a split copy committed its part, before
/// the copy is recorded complete.
pub const AFTER_COPY_PART_COMMIT: &str = "after-copy-part-commit";
/// Before tables added to a running subscription are marked as being
/// copied (those taken out are flagged removed by then).
pub const BEFORE_TABLE_COPY: &str = "before-table-copy";
/// After tables added to a running subscription were copied and recorded,
/// before the stream takes them on.
pub const AFTER_TABLE_COPY: &str = "after-table-copy";
/// While applying a streamed transaction: as it arrives, or from its spool.
pub const IN_STREAMED_TRANSACTION: &str = "in-streamed-transaction";
/// After a change was recorded as a dead letter, before its target
/// transaction commits.
pub const AFTER_DEAD_LETTER: &str = "after-dead-letter";

struct Armed {
    name: String,
    at_hit: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("FERRY_FAILPOINT").ok()?;
            let (name, at_hit) = match spec.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Armed { name, at_hit, hits: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Crashes the process here if this seam is armed and its turn has come.
pub fn point(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name == name && armed.hits.fetch_add(1, Ordering::Relaxed) + 1 == armed.at_hit {
        eprintln!("ferry: failpoint {name} reached, exiting as if killed");
        std::process::exit(137);
    }
}
