//! Statements sent ahead of their answers, bounded by number and by
//! bytes. Each waits in the client's queue until the target reads it, so a
//! slow target holds them in ferry's memory: rows of a megabyte each,
//! counted by number alone, kept hundreds of megabytes waiting.

use std::collections::VecDeque;

/// How many statements may be sent ahead of their answers. Pipelining them
/// turns one round trip per row into one per this many rows.
const MAX_STATEMENTS: usize = 2048;

/// How many bytes of parameters may wait with them: thousands of ordinary
/// rows, or a few batches (each at most about 1 MiB).
const MAX_BYTES: usize = 16 << 20;

/// Items sent and not yet answered, oldest first, with the bytes each
/// carries.
pub struct InFlight<T> {
    items: VecDeque<(usize, T)>,
    bytes: usize,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight { items: VecDeque::new(), bytes: 0 }
    }
}

impl<T> InFlight<T> {
    pub fn push(&mut self, bytes: usize, item: T) {
        self.bytes += bytes;
        self.items.push_back((bytes, item));
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let (bytes, item) = self.items.pop_front()?;
        self.bytes -= bytes;
        Some(item)
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether more waits than may: the oldest answer is to be read first.
    pub fn is_over_limit(&self) -> bool {
        self.items.len() > MAX_STATEMENTS || self.bytes > MAX_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_number_and_by_bytes() {
        let mut small = InFlight::default();
        for n in 0..=MAX_STATEMENTS {
            assert!(!small.is_over_limit(), "{n} statements");
            small.push(100, n);
        }
        assert!(small.is_over_limit());
        assert_eq!(small.pop_front(), Some(0));
        assert!(!small.is_over_limit());

        let mut large = InFlight::default();
        for n in 0..16 {
            large.push(1 << 20, n);
        }
        assert!(!large.is_over_limit(), "16 MiB may wait");
        large.push(1, 16);
        assert!(large.is_over_limit());
        large.pop_front();
        assert!(!large.is_over_limit());
        large.clear();
        assert!(large.is_empty() && !large.is_over_limit());
        large.push(MAX_BYTES + 1, 0);
        assert!(large.is_over_limit(), "one statement larger than the limit is waited for at once");
    }
}
