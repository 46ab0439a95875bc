//! The log cleaner of compacted topics: one background task per shard, for the partitions
//! that shard owns whose `cleanup.policy` holds `compact` (and `__consumer_offsets`).
//!
//! Every `--cleaner-backoff-ms` the task cleans, one after the other, the partitions due: each
//! time the one with the highest cleanable dirty ratio among those at or above their
//! `min.cleanable.dirty.ratio`, or whose oldest dirty record is older than
//! `max.compaction.lag.ms` (`PartitionLog::clean`, which reads and writes through the ring and
//! pauses after every `--cleaner-io-bytes-per-turn` so that it takes at most
//! `--cleaner-duty-percent` of the shard's time). A cleaning is dropped, never awaited, when the shard drains
//! or the partition is deleted: the storage side leaves the old segments or the new ones.
//! A failing cleaning is counted and logged (rate-limited); the partition is skipped for a
//! while and the shard goes on.

use crate::shard::{self, Partition, PartitionId};
use crate::topic_config::TopicCleanSettings;
use ringbroker_runtime::notify::Notify;
use ringbroker_storage::{CleanConfig, CleanableState};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// How long a partition whose cleaning failed is left alone before it is tried again (Kafka
/// marks it uncleanable until restart; a retry later lets a transient error heal).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(60);
/// How long a partition whose cleaning found nothing to do (its dirty records are all newer
/// than `min.compaction.lag.ms`) is left alone, unless it gets new dirty bytes: so it does
/// not take every look from partitions that can be cleaned.
const RETRY_AFTER_NOTHING_MAX: Duration = Duration::from_secs(60);

/// What this shard's cleaner did since start-up (counters for `/metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanerCounters {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub cleanings: u64,
    pub errors: u64,
}

/// One compacted partition as `/metrics` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionCleanState {
    pub topic: String,
    pub partition: i32,
    /// Dirty bytes over all bytes of the closed segments (0 when there are none).
    pub dirty_ratio: f64,
    /// Since its last cleaning, or since this shard started when it was not cleaned yet.
    pub seconds_since_last_clean: f64,
}

struct CleanerState {
    started: Instant,
    counters: CleanerCounters,
    last_clean: HashMap<PartitionId, Instant>,
    failed_at: HashMap<PartitionId, Instant>,
    /// Partitions whose last cleaning did nothing: when, their dirty bytes then, and how long
    /// to leave them.
    idle: HashMap<PartitionId, (Instant, u64, Duration)>,
    /// The partition being cleaned now, and what wakes its cleaning to drop it.
    cleaning: Option<(PartitionId, Rc<Notify>)>,
}

thread_local! {
    static STATE: RefCell<CleanerState> = RefCell::new(CleanerState {
        started: Instant::now(),
        counters: CleanerCounters::default(),
        last_clean: HashMap::new(),
        failed_at: HashMap::new(),
        idle: HashMap::new(),
        cleaning: None,
    });
}

/// The cleaning settings of compacted topics, resolved once per topic per look.
#[derive(Default)]
struct SettingsByTopic(HashMap<uuid::Uuid, Option<TopicCleanSettings>>);

impl SettingsByTopic {
    /// The cleaning settings of the topic `partition` belongs to, when it is compacted.
    fn of(&mut self, partition: &Partition) -> Option<TopicCleanSettings> {
        *self
            .0
            .entry(partition.id.topic_id)
            .or_insert_with(|| resolve_settings(partition.id.topic_id))
    }
}

fn resolve_settings(topic_id: uuid::Uuid) -> Option<TopicCleanSettings> {
    let shard = shard::current();
    let topic = shard.topic_by_id(&topic_id)?;
    let settings = shard.with_broker_view(|b| TopicCleanSettings::of(&topic.configs, b));
    match settings {
        // The offsets topic is compacted whatever its stored configs say.
        Ok(s) if s.compact || topic.name == crate::groups::OFFSETS_TOPIC => Some(s),
        Ok(_) => None,
        Err(e) => {
            crate::warn_limited!(topic = %topic.name, error = %e, "cleaner: the topic's configs do not resolve");
            None
        }
    }
}

/// Dirty bytes over all bytes of the closed segments; 0 for a log without closed segments.
pub fn dirty_ratio(state: &CleanableState) -> f64 {
    let total = state.clean_bytes + state.dirty_bytes;
    if total == 0 {
        return 0.0;
    }
    state.dirty_bytes as f64 / total as f64
}

/// Whether a log in `state` is due for a cleaning under `settings` at `now_ms`.
pub fn is_due(state: &CleanableState, settings: &TopicCleanSettings, now_ms: i64) -> bool {
    if state.dirty_bytes == 0 {
        return false;
    }
    let overdue = settings.max_compaction_lag_ms != i64::MAX
        && state
            .oldest_dirty_timestamp_ms
            .is_some_and(|ts| ts <= now_ms.saturating_sub(settings.max_compaction_lag_ms));
    overdue || dirty_ratio(state) >= settings.min_cleanable_dirty_ratio
}

/// The due partition with the highest dirty ratio, with its settings.
fn dirtiest(now_ms: i64) -> Option<(Rc<Partition>, TopicCleanSettings)> {
    let now = Instant::now();
    let mut settings_of = SettingsByTopic::default();
    let mut best: Option<(Rc<Partition>, TopicCleanSettings, f64)> = None;
    for partition in shard::current().owned() {
        let Some(settings) = settings_of.of(&partition) else {
            continue;
        };
        let state = partition.log.cleanable_state();
        if !is_due(&state, &settings, now_ms) {
            continue;
        }
        let left_alone = STATE.with(|s| {
            let s = s.borrow();
            let failed = s
                .failed_at
                .get(&partition.id)
                .is_some_and(|&at| now.duration_since(at) < RETRY_AFTER_ERROR);
            let idle = s.idle.get(&partition.id).is_some_and(|&(at, dirty, wait)| {
                dirty == state.dirty_bytes && now.duration_since(at) < wait
            });
            failed || idle
        });
        if left_alone {
            continue;
        }
        let ratio = dirty_ratio(&state);
        if best.as_ref().is_none_or(|(_, _, r)| ratio > *r) {
            best = Some((partition, settings, ratio));
        }
    }
    best.map(|(p, s, _)| (p, s))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Cleans the dirtiest due partition this shard owns, if any, unless `stop` completes first
/// (the cleaning is then dropped). Returns whether a cleaning completed.
pub async fn clean_dirtiest(stop: impl Future<Output = ()>) -> bool {
    let now_ms = now_ms();
    let Some((partition, settings)) = dirtiest(now_ms) else {
        return false;
    };
    let shard = shard::current();
    let cleaner = &shard.shared.config.cleaner;
    let log_config = partition.log.config();
    let config = CleanConfig {
        now_ms,
        delete_retention_ms: settings.delete_retention_ms,
        min_compaction_lag_ms: settings.min_compaction_lag_ms,
        map_bytes_max: cleaner.map_bytes_per_shard(shard.shared.shard_count),
        io_bytes_per_turn: cleaner.io_bytes_per_turn,
        duty_percent: cleaner.duty_percent,
        segment_bytes_max: log_config.segment_bytes,
    };
    let removed = Notify::new();
    STATE.with(|s| s.borrow_mut().cleaning = Some((partition.id, removed.clone())));
    let outcome = {
        let mut clean = pin!(partition.log.clean(&config));
        let mut stop = pin!(stop);
        let mut removed_wait = pin!(removed.notified());
        // Stop and removal first: a cleaning of a deleted partition is not polled again.
        std::future::poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() || removed_wait.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            clean.as_mut().poll(cx).map(Some)
        })
        .await
    };
    STATE.with(|s| s.borrow_mut().cleaning = None);
    let topic = partition.topic.as_str();
    let index = partition.id.index;
    match outcome {
        None => {
            tracing::info!(
                topic,
                partition = index,
                "cleaning abandoned (shard draining or partition deleted)"
            );
            false
        }
        Some(Ok(stats)) if stats.records_read == 0 && stats.bytes_written == 0 => {
            // Nothing cleanable yet (min.compaction.lag.ms) or another cleaning of it ran.
            let dirty = partition.log.cleanable_state().dirty_bytes;
            let lag = Duration::from_millis(settings.min_compaction_lag_ms.max(0) as u64);
            let wait = lag.clamp(
                cleaner.backoff,
                RETRY_AFTER_NOTHING_MAX.max(cleaner.backoff),
            );
            STATE.with(|s| {
                s.borrow_mut()
                    .idle
                    .insert(partition.id, (Instant::now(), dirty, wait))
            });
            false
        }
        Some(Ok(stats)) => {
            STATE.with(|s| {
                let mut s = s.borrow_mut();
                let c = &mut s.counters;
                c.bytes_read += stats.bytes_read;
                c.bytes_written += stats.bytes_written;
                c.records_removed += stats.records_read.saturating_sub(stats.records_kept);
                c.cleanings += 1;
                s.last_clean.insert(partition.id, Instant::now());
                s.failed_at.remove(&partition.id);
                s.idle.remove(&partition.id);
            });
            tracing::info!(
                topic,
                partition = index,
                bytes_read = stats.bytes_read,
                bytes_written = stats.bytes_written,
                records_read = stats.records_read,
                records_kept = stats.records_kept,
                tombstones_removed = stats.tombstones_removed,
                segments_before = stats.segments_before,
                segments_after = stats.segments_after,
                first_dirty_offset = stats.first_dirty_offset,
                "cleaned a compacted partition"
            );
            true
        }
        Some(Err(e)) => {
            // A partition deleted during its cleaning is no error of the cleaner's.
            if shard.partition(partition.id).is_none() {
                return false;
            }
            STATE.with(|s| {
                let mut s = s.borrow_mut();
                s.counters.errors += 1;
                s.failed_at.insert(partition.id, Instant::now());
            });
            crate::warn_limited!(topic, partition = index, error = %e, "cleaning failed; the partition is retried later");
            false
        }
    }
}

/// Called when this shard stops owning a partition (its topic is deleted): a cleaning of it
/// in progress is dropped, and its cleaner state forgotten.
pub fn partition_removed(id: PartitionId) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some((cleaning, removed)) = &s.cleaning {
            if *cleaning == id {
                removed.notify_all();
            }
        }
        s.last_clean.remove(&id);
        s.failed_at.remove(&id);
        s.idle.remove(&id);
    });
}

/// This shard's cleaner counters and the state of each compacted partition it owns (runs on
/// the shard; no I/O).
pub fn snapshot() -> (CleanerCounters, Vec<PartitionCleanState>) {
    let now = Instant::now();
    let mut settings_of = SettingsByTopic::default();
    let partitions = shard::current()
        .owned()
        .into_iter()
        .filter(|p| settings_of.of(p).is_some())
        .map(|p| {
            let since = STATE.with(|s| {
                let s = s.borrow();
                s.last_clean.get(&p.id).copied().unwrap_or(s.started)
            });
            PartitionCleanState {
                topic: p.topic.clone(),
                partition: p.id.index,
                dirty_ratio: dirty_ratio(&p.log.cleanable_state()),
                seconds_since_last_clean: now.duration_since(since).as_secs_f64(),
            }
        })
        .collect();
    (STATE.with(|s| s.borrow().counters), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(clean: u64, dirty: u64, oldest: Option<i64>) -> CleanableState {
        CleanableState {
            first_dirty_offset: 0,
            clean_bytes: clean,
            dirty_bytes: dirty,
            oldest_dirty_timestamp_ms: oldest,
        }
    }

    fn settings(ratio: f64, max_lag_ms: i64) -> TopicCleanSettings {
        TopicCleanSettings {
            compact: true,
            delete: false,
            delete_retention_ms: 0,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: max_lag_ms,
            min_cleanable_dirty_ratio: ratio,
        }
    }

    #[test]
    fn a_log_is_due_at_its_dirty_ratio_or_past_its_max_compaction_lag() {
        assert_eq!(dirty_ratio(&state(0, 0, None)), 0.0);
        assert_eq!(dirty_ratio(&state(300, 100, None)), 0.25);
        // Nothing dirty: never due, whatever the settings.
        assert!(!is_due(&state(100, 0, Some(0)), &settings(0.0, 1), 1_000));
        assert!(is_due(&state(100, 100, None), &settings(0.5, i64::MAX), 0));
        assert!(!is_due(&state(300, 100, None), &settings(0.5, i64::MAX), 0));
        // Below the ratio but its oldest dirty record is older than max.compaction.lag.ms.
        assert!(is_due(
            &state(300, 100, Some(1_000)),
            &settings(0.5, 500),
            1_500
        ));
        assert!(!is_due(
            &state(300, 100, Some(1_000)),
            &settings(0.5, 500),
            1_499
        ));
        assert!(is_due(&state(300, 1, None), &settings(0.0, i64::MAX), 0));
    }
}
