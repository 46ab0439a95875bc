//! The sparse offset index of a segment: `(offset - base_offset) as u32, position as u32`
//! every `index_interval_bytes` of log, as in Kafka's `.index` files (8 bytes per entry).

#[derive(Debug, Default, Clone)]
pub struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub fn push(&mut self, relative_offset: u32, position: u32) {
        debug_assert!(self
            .entries
            .last()
            .is_none_or(|&(o, p)| o < relative_offset && p < position));
        self.entries.push((relative_offset, position));
    }

    /// The position of the last indexed batch starting at or before `relative_offset`
    /// (0 when none is): a scan from there finds the batch holding the offset.
    pub fn lookup(&self, relative_offset: u32) -> u32 {
        let i = self.entries.partition_point(|&(o, _)| o <= relative_offset);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].1
        }
    }

    /// The greatest indexed position `p` with `after < p <= at_most` (every indexed position
    /// is a batch start, so a read may end there).
    pub fn last_position_in(&self, after: u32, at_most: u32) -> Option<u32> {
        let i = self.entries.partition_point(|&(_, p)| p <= at_most);
        self.entries[..i]
            .last()
            .map(|&(_, p)| p)
            .filter(|&p| p > after)
    }

    /// Drops the entries at `position` or beyond; returns how many remain.
    pub fn truncate_at_position(&mut self, position: u32) -> usize {
        self.entries.retain(|&(_, p)| p < position);
        self.entries.len()
    }

    /// How many entries point below `position` (entries are in position order).
    pub fn entries_below(&self, position: u64) -> usize {
        self.entries
            .partition_point(|&(_, p)| (p as u64) < position)
    }

    /// The position of entry `i`.
    pub fn position_at(&self, i: usize) -> Option<u32> {
        self.entries.get(i).map(|&(_, p)| p)
    }

    pub fn last_position(&self) -> Option<u32> {
        self.entries.last().map(|&(_, p)| p)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The on-disk form of one entry.
    pub fn encode_entry(relative_offset: u32, position: u32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&relative_offset.to_be_bytes());
        b[4..].copy_from_slice(&position.to_be_bytes());
        b
    }

    pub fn encode_all(&self) -> Vec<u8> {
        self.encode_from(0)
    }

    /// The on-disk form of the entries from index `first` on.
    pub fn encode_from(&self, first: usize) -> Vec<u8> {
        self.encode_range(first, self.entries.len())
    }

    /// The on-disk form of the entries `first..end` (clamped to those that exist).
    pub fn encode_range(&self, first: usize, end: usize) -> Vec<u8> {
        let end = end.min(self.entries.len());
        self.entries[first.min(end)..end]
            .iter()
            .flat_map(|&(o, p)| Self::encode_entry(o, p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// lookup returns the greatest indexed position whose offset is <= the target.
        #[test]
        fn lookup_finds_the_floor_entry(gaps in proptest::collection::vec((1u32..100, 1u32..5000), 0..200), target in 0u32..30_000) {
            let mut idx = OffsetIndex::default();
            let (mut o, mut p) = (0u32, 0u32);
            let mut all = Vec::new();
            for (go, gp) in gaps {
                o += go;
                p += gp;
                idx.push(o, p);
                all.push((o, p));
            }
            let expected = all.iter().rev().find(|&&(eo, _)| eo <= target).map_or(0, |&(_, ep)| ep);
            prop_assert_eq!(idx.lookup(target), expected);
            let (after, at_most) = (target, target.saturating_add(7000));
            let expected_end = all.iter().rev().find(|&&(_, p)| p > after && p <= at_most).map(|&(_, p)| p);
            prop_assert_eq!(idx.last_position_in(after, at_most), expected_end);
        }
    }
}
