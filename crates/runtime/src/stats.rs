//! Cheap per-thread statistics for the data path.
//!
//! A shard records into plain cells it alone touches (no atomics, no locks, no allocation);
//! the metrics thread asks each shard for a snapshot when it publishes (see the broker's
//! `metrics` module). Histograms keep a count and an exact sum per bucket, so the publisher
//! can hand the exporter samples that land in the right buckets and add up to the right sum.

use std::cell::Cell;

/// Upper bounds (seconds) of latency buckets, 50 µs to 5 s; one more bucket catches the rest.
pub const LATENCY_BOUNDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

const SLOTS: usize = LATENCY_BOUNDS.len() + 1;

/// A latency histogram owned by one thread.
pub struct LocalHistogram {
    counts: [Cell<u64>; SLOTS],
    sums: [Cell<f64>; SLOTS],
}

impl Default for LocalHistogram {
    fn default() -> Self {
        LocalHistogram {
            counts: std::array::from_fn(|_| Cell::new(0)),
            sums: std::array::from_fn(|_| Cell::new(0.0)),
        }
    }
}

/// What a histogram gathered since the previous `take`: per bucket, (count, sum of samples).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramDelta {
    pub buckets: Vec<(u64, f64)>,
}

impl HistogramDelta {
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|&(n, _)| n == 0)
    }

    /// One representative sample per non-empty bucket with its multiplicity: the mean of the
    /// samples in that bucket, which lies inside the bucket, so `record_many(mean, count)`
    /// reproduces both the bucket counts and the total sum.
    pub fn samples(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.buckets
            .iter()
            .filter(|&&(n, _)| n > 0)
            .map(|&(n, sum)| (sum / n as f64, n))
    }
}

impl LocalHistogram {
    pub fn record(&self, seconds: f64) {
        let slot = LATENCY_BOUNDS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.counts[slot].set(self.counts[slot].get() + 1);
        self.sums[slot].set(self.sums[slot].get() + seconds);
    }

    /// Everything recorded since the last call; resets the histogram.
    pub fn take(&self) -> HistogramDelta {
        HistogramDelta {
            buckets: self
                .counts
                .iter()
                .zip(&self.sums)
                .map(|(c, s)| (c.replace(0), s.replace(0.0)))
                .collect(),
        }
    }
}

/// A monotonic counter owned by one thread.
#[derive(Default)]
pub struct LocalCounter(Cell<u64>);

impl LocalCounter {
    pub fn add(&self, n: u64) {
        self.0.set(self.0.get() + n);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_reproduce_bucket_counts_and_the_sum() {
        let h = LocalHistogram::default();
        let values = [0.00001, 0.00004, 0.0007, 0.0009, 0.3, 9.0];
        for v in values {
            h.record(v);
        }
        let d = h.take();
        let samples: Vec<(f64, u64)> = d.samples().collect();
        assert_eq!(samples.iter().map(|s| s.1).sum::<u64>(), 6);
        let sum: f64 = samples.iter().map(|&(m, n)| m * n as f64).sum();
        assert!((sum - values.iter().sum::<f64>()).abs() < 1e-9);
        // Each representative stays in the bucket its samples came from.
        for (mean, _) in samples {
            let slot = LATENCY_BOUNDS.iter().position(|&b| mean <= b);
            assert!(values
                .iter()
                .any(|&v| LATENCY_BOUNDS.iter().position(|&b| v <= b) == slot));
        }
        assert!(h.take().is_empty());
    }
}
