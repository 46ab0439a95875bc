use super::*;
use crate::log::tests::slice_bytes;
use crate::log::{LogConfig, ReadError, Recovery};
use ringbroker_runtime::block_on;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `(offset, key, value)` of one record; `None` value: a tombstone.
type Entry = (i64, Option<Vec<u8>>, Option<Vec<u8>>);
/// `(key, value)` of a record to append; `None` value: a tombstone.
type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
type OwnedKeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A v2 batch of keyed records compressed with `codec`; record `i` has timestamp `ts + i`.
pub(crate) fn keyed_batch(codec: Codec, ts: i64, records: &[KeyValue]) -> Bytes {
    let mut section = Vec::new();
    for (i, (key, value)) in records.iter().enumerate() {
        let mut body = vec![0u8];
        put_varint(&mut body, i as i64);
        put_varint(&mut body, i as i64);
        for field in [key, value] {
            match field {
                Some(b) => {
                    put_varint(&mut body, b.len() as i64);
                    body.extend_from_slice(b);
                }
                None => put_varint(&mut body, -1),
            }
        }
        put_varint(&mut body, 0);
        put_varint(&mut section, body.len() as i64);
        section.extend_from_slice(&body);
    }
    let payload = compression::compress(codec, &section).unwrap();
    let n = records.len() as i32;
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((49 + payload.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&codec.attribute_bits().to_be_bytes());
    b.extend_from_slice(&(n - 1).to_be_bytes());
    b.extend_from_slice(&ts.to_be_bytes());
    b.extend_from_slice(&(ts + n as i64 - 1).to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

/// What reading the whole log returns: its records, and per batch `(base offset, codec)`.
/// Every batch's CRC, length and header are checked.
async fn read_all(log: &PartitionLog) -> (Vec<Entry>, Vec<(i64, Codec)>) {
    let (mut entries, mut batches) = (Vec::new(), Vec::new());
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let r = log.read(offset, 1 << 20).await.unwrap();
        if r.records.is_empty() {
            break;
        }
        let mut at = 0;
        while at < r.records.len() {
            let frame = BatchFrame::parse(&r.records[at..]).unwrap();
            let batch = &r.records[at..at + frame.total_bytes];
            assert!(
                frame.crc_matches(batch),
                "CRC of batch {}",
                frame.base_offset
            );
            let (codec, section, records) = batch_records(batch, &frame).unwrap();
            assert!(!records.is_empty(), "no empty batch is kept");
            let mut max_ts = i64::MIN;
            let base_ts = i64::from_be_bytes(batch[27..35].try_into().unwrap());
            for (i, rec) in records.iter().enumerate() {
                let o = frame.base_offset + rec.offset_delta;
                assert!(o < frame.next_offset());
                if i == 0 {
                    assert_eq!(rec.ts_delta, 0, "base timestamp is the first record's");
                }
                max_ts = max_ts.max(base_ts + rec.ts_delta);
                let key = rec.key.clone().map(|k| section[k].to_vec());
                // The value follows the key: re-read it from the record's tail.
                let value = value_of(&section, rec);
                entries.push((o, key, value));
            }
            assert_eq!(
                frame.max_timestamp, max_ts,
                "max timestamp of the retained records"
            );
            batches.push((frame.base_offset, codec));
            offset = frame.next_offset();
            at += frame.total_bytes;
        }
    }
    (entries, batches)
}

fn value_of(section: &[u8], rec: &Rec) -> Option<Vec<u8>> {
    let tail = &section[rec.tail.clone()];
    let mut p = 0;
    let key_len = read_varint(tail, &mut p).unwrap();
    if key_len > 0 {
        p += key_len as usize;
    }
    let value_len = read_varint(tail, &mut p).unwrap();
    (value_len >= 0).then(|| tail[p..p + value_len as usize].to_vec())
}

/// What cleaning everything below `clean_end` leaves: there, the latest record of each key
/// (keyless records dropped); from `clean_end` on, everything.
fn expected(appended: &[Entry], clean_end: i64) -> Vec<Entry> {
    let mut latest: HashMap<&[u8], i64> = HashMap::new();
    for (o, k, _) in appended.iter().filter(|e| e.0 < clean_end) {
        if let Some(k) = k {
            latest.insert(k, *o);
        }
    }
    appended
        .iter()
        .filter(|(o, k, _)| {
            *o >= clean_end || k.as_deref().is_some_and(|k| latest.get(k) == Some(o))
        })
        .cloned()
        .collect()
}

fn small_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 700,
        retention_ms: None,
        index_interval_bytes: 150,
        ..LogConfig::default()
    }
}

fn clean_config(now_ms: i64) -> CleanConfig {
    CleanConfig {
        now_ms,
        delete_retention_ms: 1_000_000,
        min_compaction_lag_ms: 0,
        map_bytes_max: 1 << 20,
        io_bytes_per_turn: 512,
        duty_percent: 100,
        segment_bytes_max: 3000,
    }
}

const CODECS: [Codec; 5] = [
    Codec::None,
    Codec::Gzip,
    Codec::Snappy,
    Codec::Lz4,
    Codec::Zstd,
];

/// Appends `rounds` batches of updates to 12 keys (some tombstones, some keyless records),
/// cycling through the codecs; returns what was appended.
async fn append_updates(log: &PartitionLog, rounds: usize, ts: i64) -> Vec<Entry> {
    let mut appended = Vec::new();
    for round in 0..rounds {
        let n = 1 + round % 3;
        let recs: Vec<OwnedKeyValue> = (0..n)
            .map(|i| {
                let k = (round * 7 + i * 5) % 12;
                let key = (k != 11 || round % 2 == 0).then(|| format!("key-{k}").into_bytes());
                let value = (round % 9 != 4).then(|| format!("value-{round}-{i}").into_bytes());
                (key, value)
            })
            .collect();
        let refs: Vec<KeyValue> = recs
            .iter()
            .map(|(k, v)| (k.as_deref(), v.as_deref()))
            .collect();
        let codec = CODECS[round % CODECS.len()];
        let base = log
            .append_batch(keyed_batch(codec, ts + round as i64, &refs), n as u32)
            .await
            .unwrap();
        for (i, (k, v)) in recs.into_iter().enumerate() {
            appended.push((base + i as i64, k, v));
        }
    }
    appended
}

#[test]
fn cleaning_keeps_exactly_the_latest_record_of_every_key_and_never_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c-0");
    let p = path.clone();
    let (want, active_base) = block_on(async move {
        let log = PartitionLog::open(&p, small_log_config()).unwrap();
        let appended = append_updates(&log, 120, 1000).await;
        let before_segments = log.segment_count();
        assert!(before_segments > 10);
        let active_base = log.active_segment_base();
        let (active_file, active_len) = {
            let st = log.state.borrow();
            let a = st.segments.last().unwrap();
            (a.log.clone(), a.committed_bytes)
        };
        let (before, batches_before) = read_all(&log).await;
        assert_eq!(before, appended);
        let state = log.cleanable_state();
        assert_eq!(state.first_dirty_offset, 0);
        assert!(state.dirty_bytes > 0 && state.clean_bytes == 0);

        let stats = log.clean(&clean_config(10_000)).await.unwrap();
        let want = expected(&appended, active_base);
        let (after, batches_after) = read_all(&log).await;
        assert_eq!(after, want);
        assert!(want.len() < appended.len() / 2, "cleaning dropped records");
        assert_eq!(stats.first_dirty_offset, active_base);
        assert_eq!(stats.segments_before, before_segments);
        assert!(
            stats.segments_after < before_segments,
            "small segments merged"
        );
        assert!(stats.records_kept < stats.records_read);
        assert!(stats.bytes_written < stats.bytes_read);
        // Compressed batches keep their codec.
        let codecs: HashMap<i64, Codec> = batches_before.into_iter().collect();
        for (base, codec) in &batches_after {
            assert_eq!(codecs[base], *codec, "batch {base}");
        }
        assert!(batches_after.iter().any(|(_, c)| *c != Codec::None));
        // The active segment is the same file, untouched.
        {
            let st = log.state.borrow();
            let a = st.segments.last().unwrap();
            assert!(Arc::ptr_eq(&a.log, &active_file));
            assert_eq!(a.committed_bytes, active_len);
            assert_eq!(a.base_offset, active_base);
        }
        let state = log.cleanable_state();
        assert_eq!(state.first_dirty_offset, active_base);
        assert_eq!(state.dirty_bytes, 0);
        assert!(state.clean_bytes > 0);
        // A second cleaning has nothing to do.
        let again = log.clean(&clean_config(10_000)).await.unwrap();
        assert_eq!(again.bytes_written, 0);
        assert_eq!(read_all(&log).await.0, want);
        // Appends go on at the same offsets.
        let next = log.high_watermark();
        let b = keyed_batch(Codec::None, 5000, &[(Some(b"key-1"), Some(b"late"))]);
        assert_eq!(log.append_batch(b, 1).await.unwrap(), next);
        log.close().await.unwrap();
        let mut want = want;
        want.push((next, Some(b"key-1".to_vec()), Some(b"late".to_vec())));
        (want, active_base)
    })
    .unwrap();
    let names: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".cleaned") || n.ends_with(".swap")),
        "{names:?}"
    );
    for recovery in [Recovery::TrustCleanShutdown, Recovery::Scan] {
        let p = path.clone();
        let want = want.clone();
        block_on(async move {
            let log = PartitionLog::open_with(&p, small_log_config(), recovery).unwrap();
            if recovery == Recovery::TrustCleanShutdown {
                // Cleaned segments load from their index files, gaps and all, without a scan.
                assert_eq!(log.recovery_report().scanned_bytes, 0);
            }
            assert_eq!(read_all(&log).await.0, want, "{recovery:?}");
            assert_eq!(log.cleanable_state().first_dirty_offset, active_base);
        })
        .unwrap();
    }
}

#[test]
fn reads_at_offsets_inside_gaps_return_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        append_updates(&log, 90, 1000).await;
        log.clean(&clean_config(10_000)).await.unwrap();
        // Every batch of the log, by its offsets.
        let mut batches = Vec::new();
        let mut offset = 0;
        while offset < log.high_watermark() {
            let r = log.read(offset, 1 << 20).await.unwrap();
            let mut at = 0;
            while at < r.records.len() {
                let f = BatchFrame::parse(&r.records[at..]).unwrap();
                batches.push((f.base_offset, f.next_offset()));
                offset = f.next_offset();
                at += f.total_bytes;
            }
        }
        let covered: i64 = batches.iter().map(|(b, n)| n - b).sum();
        assert!(covered < log.high_watermark(), "the log has gaps");
        let mut gaps_at_segment_ends = 0;
        for o in 0..log.high_watermark() {
            let want = batches.iter().find(|(_, n)| *n > o).copied().unwrap();
            for (got, how) in [
                (log.read(o, 1).await.unwrap().records, "read"),
                (
                    Bytes::from(slice_bytes(&log.read_slice(o, 1).await.unwrap())),
                    "slice",
                ),
            ] {
                let f = BatchFrame::parse(&got).unwrap();
                assert_eq!((f.base_offset, f.next_offset()), want, "{how} at {o}");
            }
            let st = log.state.borrow();
            let i = st.segments.partition_point(|s| s.base_offset <= o) - 1;
            if st
                .segments
                .get(i + 1)
                .is_some_and(|n| n.base_offset <= want.0)
            {
                gaps_at_segment_ends += 1;
            }
        }
        assert!(gaps_at_segment_ends > 0, "some gap ran to a segment's end");
        assert!(matches!(
            log.read(log.high_watermark() + 1, 10).await,
            Err(ReadError::OutOfRange { .. })
        ));
    })
    .unwrap();
}

#[test]
fn tombstones_survive_one_cleaning_and_go_once_older_than_delete_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        let mut next = 0;
        let put = |k: &'static [u8], v: Option<&'static [u8]>, ts: i64| {
            keyed_batch(Codec::None, ts, &[(Some(k), v)])
        };
        for i in 0..30 {
            log.append_batch(put(b"a", Some(b"a-value"), 1000 + i), 1)
                .await
                .unwrap();
            next += 1;
        }
        log.append_batch(put(b"a", None, 2000), 1).await.unwrap(); // tombstone at `next`
        let tombstone = next;
        for i in 0..30 {
            log.append_batch(put(b"b", Some(b"b-value"), 3000 + i), 1)
                .await
                .unwrap();
        }
        let tombstones = |entries: &[Entry]| {
            entries
                .iter()
                .filter(|e| e.2.is_none())
                .map(|e| e.0)
                .collect::<Vec<_>>()
        };
        // First cleaning: the tombstone was dirty, so it stays even though old.
        let config = CleanConfig {
            delete_retention_ms: 100,
            ..clean_config(100_000)
        };
        log.clean(&config).await.unwrap();
        assert_eq!(tombstones(&read_all(&log).await.0), vec![tombstone]);
        // More data, a second cleaning, but the tombstone is not old enough yet.
        for i in 0..30 {
            log.append_batch(put(b"c", Some(b"c-value"), 4000 + i), 1)
                .await
                .unwrap();
        }
        let young = CleanConfig {
            delete_retention_ms: 100_000 - 2000,
            ..clean_config(100_000)
        };
        let stats = log.clean(&young).await.unwrap();
        assert!(stats.bytes_written > 0);
        assert_eq!(stats.tombstones_removed, 0);
        assert_eq!(tombstones(&read_all(&log).await.0), vec![tombstone]);
        // Older than delete.retention.ms: removed.
        for i in 0..30 {
            log.append_batch(put(b"d", Some(b"d-value"), 5000 + i), 1)
                .await
                .unwrap();
        }
        let stats = log.clean(&config).await.unwrap();
        assert_eq!(stats.tombstones_removed, 1);
        let (entries, _) = read_all(&log).await;
        assert!(tombstones(&entries).is_empty());
        assert!(!entries.iter().any(|e| e.1.as_deref() == Some(b"a")));
    })
    .unwrap();
}

#[test]
fn records_within_the_min_compaction_lag_are_not_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        let mut appended = Vec::new();
        for i in 0..80i64 {
            let b = keyed_batch(Codec::None, 1000 + i * 100, &[(Some(b"k"), Some(b"v"))]);
            let o = log.append_batch(b, 1).await.unwrap();
            appended.push((o, Some(b"k".to_vec()), Some(b"v".to_vec())));
        }
        // now - lag = 5000: batches with timestamps above it (offsets 41..) are not touched.
        let config = CleanConfig {
            min_compaction_lag_ms: 5000,
            ..clean_config(10_000)
        };
        log.clean(&config).await.unwrap();
        let dirty_end = 41;
        assert_eq!(log.cleanable_state().first_dirty_offset, dirty_end);
        assert_eq!(read_all(&log).await.0, expected(&appended, dirty_end));
        // Nothing old enough is dirty: nothing more to do.
        assert_eq!(log.clean(&config).await.unwrap().bytes_written, 0);
    })
    .unwrap();
}

#[test]
fn a_small_map_cleans_in_several_passes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        let appended = append_updates(&log, 150, 1000).await;
        let active_base = log.active_segment_base();
        let config = CleanConfig {
            map_bytes_max: 3 * map_entry_bytes(6),
            ..clean_config(10_000)
        };
        let mut passes = 0;
        let mut stats = CleanStats::default();
        while let Pass::Cleaned { more } = log.clean_pass(&config, &mut stats, None).await.unwrap()
        {
            passes += 1;
            if !more {
                break;
            }
        }
        assert!(passes > 3, "{passes} passes");
        assert_eq!(read_all(&log).await.0, expected(&appended, active_base));
        // And `clean` runs every pass itself.
        let dir2 = tempfile::tempdir().unwrap();
        let log2 = PartitionLog::open(&dir2.path().join("m-1"), small_log_config()).unwrap();
        let appended2 = append_updates(&log2, 150, 1000).await;
        let end2 = log2.active_segment_base();
        log2.clean(&config).await.unwrap();
        assert_eq!(read_all(&log2).await.0, expected(&appended2, end2));
        // A map too small for one batch's keys is an error, not a loop.
        let tiny = CleanConfig {
            map_bytes_max: 8,
            ..config
        };
        let log3 = PartitionLog::open(&dir2.path().join("m-2"), small_log_config()).unwrap();
        append_updates(&log3, 40, 1000).await;
        assert!(log3.clean(&tiny).await.is_err());
    })
    .unwrap();
}

/// `got` is the `new` content up to some offset and the `old` one after it (the groups
/// swapped in before a crash, in offset order).
fn assert_cleaned_prefix(got: &[Entry], old: &[Entry], new: &[Entry]) {
    let split = old.iter().map(|e| e.0).chain([i64::MAX]).find(|&x| {
        let mixed: Vec<Entry> = new
            .iter()
            .filter(|e| e.0 < x)
            .chain(old.iter().filter(|e| e.0 >= x))
            .cloned()
            .collect();
        mixed == got
    });
    assert!(split.is_some(), "not a cleaned prefix: {got:?}");
}

#[test]
fn a_crash_at_any_point_of_the_swap_leaves_the_old_or_the_new_content() {
    for (point, decided) in [
        (CrashPoint::CleanedWritten, false),
        (CrashPoint::SwapRenamed, true),
        (CrashPoint::OldDeleted, true),
    ] {
        for recovery in [Recovery::Scan, Recovery::TrustCleanShutdown] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x-0");
            let p = path.clone();
            let (old, new) = block_on(async move {
                let log = PartitionLog::open(&p, small_log_config()).unwrap();
                let appended = append_updates(&log, 100, 1000).await;
                log.close().await.unwrap();
                log.checkpoint_recovery_point().await.unwrap();
                let new = expected(&appended, log.active_segment_base());
                let mut stats = CleanStats::default();
                let pass = log
                    .clean_pass(&clean_config(10_000), &mut stats, Some(point))
                    .await
                    .unwrap();
                assert!(matches!(pass, Pass::Crashed));
                (appended, new)
            })
            .unwrap();
            let (old, new) = (old, new);
            let p = path.clone();
            block_on(async move {
                let log = PartitionLog::open_with(&p, small_log_config(), recovery).unwrap();
                let (got, _) = read_all(&log).await;
                if decided {
                    // The groups swapped in so far (in offset order) are new, the rest old:
                    // the new content up to some offset, the old one after it.
                    assert_cleaned_prefix(&got, &old, &new);
                    assert_ne!(got, old, "{point:?}: the decided swap was finished");
                } else {
                    assert_eq!(got, old, "{point:?} {recovery:?}");
                }
                // A cleaning after the restart finishes the job.
                log.clean(&clean_config(10_000)).await.unwrap();
                assert_eq!(read_all(&log).await.0, new, "{point:?} {recovery:?}");
            })
            .unwrap();
            let names: Vec<String> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(
                !names
                    .iter()
                    .any(|n| n.ends_with(".cleaned") || n.ends_with(".swap")),
                "{point:?}: {names:?}"
            );
        }
    }
}

#[test]
fn an_interrupted_rename_of_the_swap_files_is_finished_at_open() {
    // Crash in the middle of the final renames: one group's index already renamed, its log
    // still `.swap`; another group whose index swap lost its log (never decided).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    let (old, new) = block_on(async move {
        let log = PartitionLog::open(&p, small_log_config()).unwrap();
        let appended = append_updates(&log, 100, 1000).await;
        log.close().await.unwrap();
        let new = expected(&appended, log.active_segment_base());
        let mut stats = CleanStats::default();
        let pass = log
            .clean_pass(
                &clean_config(10_000),
                &mut stats,
                Some(CrashPoint::OldDeleted),
            )
            .await
            .unwrap();
        assert!(matches!(pass, Pass::Crashed));
        (appended, new)
    })
    .unwrap();
    let swap = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find_map(|n| parse_swap_log(&n))
        .unwrap();
    std::fs::rename(
        path.join(swap_index_name(swap.0, "index")),
        path.join(segment::file_name(swap.0, "index")),
    )
    .unwrap();
    std::fs::write(path.join(swap_index_name(999_999, "timeindex")), b"junk").unwrap();
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        let (got, _) = read_all(&log).await;
        assert_ne!(got, old);
        assert_cleaned_prefix(&got, &old, &new);
        assert!(!path.join(swap_index_name(999_999, "timeindex")).exists());
    })
    .unwrap();
}

#[test]
fn appends_running_during_a_clean_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a-0");
    block_on(async move {
        let log = Rc::new(PartitionLog::open(&path, small_log_config()).unwrap());
        let mut appended = append_updates(&log, 120, 1000).await;
        let clean_end = log.active_segment_base();
        let config = CleanConfig {
            io_bytes_per_turn: 64,
            ..clean_config(10_000)
        };
        let cleaner = {
            let log = log.clone();
            ringbroker_runtime::spawn(async move { log.clean(&config).await })
        };
        let mut turns_while_cleaning = 0;
        for i in 0..200 {
            let key = format!("key-{}", i % 12).into_bytes();
            let value = format!("during-{i}").into_bytes();
            let b = keyed_batch(Codec::Lz4, 2000 + i, &[(Some(&key), Some(&value))]);
            let o = log.append_batch(b, 1).await.unwrap();
            appended.push((o, Some(key), Some(value)));
            if log.state.borrow().cleaning {
                turns_while_cleaning += 1;
            }
            ringbroker_runtime::yield_now().await;
        }
        let stats = cleaner.await.unwrap().unwrap();
        assert!(turns_while_cleaning > 5, "{turns_while_cleaning}");
        assert!(stats.bytes_written > 0);
        // The clean covered what was closed when it started (at least): everything appended
        // meanwhile is there, and the latest value of every key too.
        let (got, _) = read_all(&log).await;
        let first_dirty = log.cleanable_state().first_dirty_offset;
        assert!(first_dirty >= clean_end);
        assert_eq!(got, expected(&appended, first_dirty));
        let latest = |entries: &[Entry]| {
            let mut m = BTreeMap::new();
            for (o, k, v) in entries {
                if let Some(k) = k {
                    m.insert(k.clone(), (*o, v.clone()));
                }
            }
            m
        };
        assert_eq!(latest(&got), latest(&appended));
    })
    .unwrap();
}

#[test]
fn retention_delete_records_and_timestamp_lookups_work_on_a_cleaned_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        let appended = append_updates(&log, 120, 1000).await;
        log.clean(&clean_config(10_000)).await.unwrap();
        let want = expected(&appended, log.active_segment_base());
        // Timestamp lookups find the first kept batch at or after the time.
        let t = 1060;
        let batch = log.batch_for_timestamp(t, 0).await.unwrap().unwrap();
        let f = BatchFrame::parse(&batch).unwrap();
        assert!(f.max_timestamp >= t);
        // DeleteRecords inside a gap: reads start at the next kept batch.
        let mid = want[want.len() / 2].0;
        let gap = (1..mid)
            .rev()
            .find(|o| !want.iter().any(|e| e.0 == *o))
            .unwrap();
        log.delete_records_before(gap).await.unwrap();
        let (got, _) = read_all(&log).await;
        assert!(got[0].0 >= gap, "nothing below the start");
        assert_eq!(got[0], want.iter().find(|e| e.0 >= gap).cloned().unwrap());
        // Retention by size still leaves a readable suffix.
        log.set_config(LogConfig {
            retention_bytes: Some(1500),
            ..small_log_config()
        });
        log.enforce_retention(0).unwrap();
        let start = log.log_start_offset();
        let (got, _) = read_all(&log).await;
        assert_eq!(
            got.iter()
                .filter(|e| e.0 >= start)
                .cloned()
                .collect::<Vec<_>>(),
            want.into_iter()
                .filter(|e| e.0 >= start)
                .collect::<Vec<_>>()
        );
        // A cleaning after both works from the new start.
        log.clean(&clean_config(10_000)).await.unwrap();
        assert!(log.cleanable_state().first_dirty_offset >= start);
    })
    .unwrap();
}

#[test]
fn keyless_records_are_dropped_and_control_batches_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        let mut control = keyed_batch(Codec::None, 1000, &[(Some(b"\0\0\0\0"), Some(b"m"))]);
        {
            let mut b = control.to_vec();
            b[21..23].copy_from_slice(&(ATTR_CONTROL | 0x10).to_be_bytes());
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            control = Bytes::from(b);
        }
        let control_at = log.append_batch(control.clone(), 1).await.unwrap();
        for i in 0..40 {
            let b = keyed_batch(
                Codec::Snappy,
                1000 + i,
                &[(None, Some(b"no key")), (Some(b"k"), Some(b"v"))],
            );
            log.append_batch(b, 2).await.unwrap();
        }
        log.clean(&clean_config(10_000)).await.unwrap();
        let r = log.read(control_at, 1).await.unwrap();
        assert_eq!(&r.records[8..], &control[8..], "control batch copied as is");
        let active = log.active_segment_base();
        let (got, _) = read_all(&log).await;
        assert!(got.iter().all(|e| e.0 >= active || e.1.is_some()));
        assert_eq!(
            got.iter()
                .filter(|e| e.0 < active && e.1.as_deref() == Some(b"k"))
                .count(),
            1
        );
    })
    .unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
    /// Random keyed appends and tombstones over many small segments, cleaned with a map of a
    /// few keys (several passes), several times: reading from the start gives exactly the
    /// latest record of every key below the active segment and everything in it, with their
    /// offsets; after a reopen too. With `crash`, the last cleaning stops at that point as a
    /// crash would; the log reopens (scan or trusted) and a cleaning then ends the same.
    #[test]
    fn cleaning_matches_the_model(
        ops in proptest::collection::vec(
            (proptest::collection::vec((0u8..20, proptest::bool::weighted(0.15), 0usize..40), 1..5), 0usize..5),
            1..120),
        map_keys in 1usize..30,
        merge_bytes in 700u64..6000,
        cleanings in 1usize..3,
        crash in proptest::option::of((0usize..3, proptest::bool::ANY)),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p-0");
        let p = path.clone();
        let config = CleanConfig {
            map_bytes_max: map_keys * map_entry_bytes(6) + 4 * map_entry_bytes(6),
            segment_bytes_max: merge_bytes,
            delete_retention_ms: i64::MAX / 4,
            ..clean_config(1_000_000)
        };
        let c = config.clone();
        let (want, end, old) = block_on(async move {
            let log = PartitionLog::open(&p, small_log_config()).unwrap();
            let mut appended = Vec::new();
            let chunk = ops.len().div_ceil(cleanings);
            let parts = ops.chunks(chunk).count();
            let mut old = Vec::new();
            for (n, part) in ops.chunks(chunk).enumerate() {
                for (i, (recs, codec)) in part.iter().enumerate() {
                    let owned: Vec<(Vec<u8>, Option<Vec<u8>>)> = recs
                        .iter()
                        .map(|&(k, tomb, len)| {
                            (format!("k{k:02}").into_bytes(), (!tomb).then(|| vec![b'a' + (i % 26) as u8; len]))
                        })
                        .collect();
                    let refs: Vec<KeyValue> =
                        owned.iter().map(|(k, v)| (Some(&k[..]), v.as_deref())).collect();
                    let b = keyed_batch(CODECS[*codec], 1000, &refs);
                    let base = log.append_batch(b, refs.len() as u32).await.unwrap();
                    for (j, (k, v)) in owned.into_iter().enumerate() {
                        appended.push((base + j as i64, Some(k), v));
                    }
                }
                match crash {
                    Some((point, _)) if n + 1 == parts => {
                        log.close().await.unwrap();
                        old = read_all(&log).await.0;
                        let point = [CrashPoint::CleanedWritten, CrashPoint::SwapRenamed, CrashPoint::OldDeleted][point];
                        let mut stats = CleanStats::default();
                        log.clean_pass(&c, &mut stats, Some(point)).await.unwrap();
                    }
                    _ => {
                        log.clean(&c).await.unwrap();
                    }
                }
            }
            let end = log.active_segment_base();
            let want = expected(&appended, end);
            if crash.is_none() {
                assert_eq!(read_all(&log).await.0, want.clone());
            }
            (want, end, old)
        }).unwrap();
        block_on(async move {
            let recovery = match crash {
                Some((_, false)) => Recovery::Scan,
                _ => Recovery::TrustCleanShutdown,
            };
            let log = PartitionLog::open_with(&path, small_log_config(), recovery).unwrap();
            let (got, _) = read_all(&log).await;
            if crash.is_some() {
                // Whatever the point: every record the model keeps is there, with its offset,
                // and nothing that was not appended.
                assert!(want.iter().all(|e| got.contains(e)), "lost a latest record");
                assert!(got.iter().all(|e| old.contains(e)), "a record that was not in the log");
                log.clean(&config).await.unwrap();
                assert_eq!(read_all(&log).await.0, want);
            } else {
                assert_eq!(got, want);
            }
            assert_eq!(log.cleanable_state().first_dirty_offset, end);
        }).unwrap();
    }
}

#[test]
fn the_first_dirty_offset_file_round_trips_and_a_damaged_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_first_dirty(dir.path()), None);
    write_first_dirty(dir.path(), 42).unwrap();
    assert_eq!(read_first_dirty(dir.path()), Some(42));
    std::fs::write(
        dir.path().join(FILE_NAME),
        b"RBCO\0\0\0\0\0\0\0\x07\0\0\0\0",
    )
    .unwrap();
    assert_eq!(read_first_dirty(dir.path()), None);
    assert_eq!(parse_swap_log(&swap_log_name(5, 90)), Some((5, 90)));
    assert_eq!(
        parse_segment_file("00000000000000000005.index"),
        Some((5, "index"))
    );
    assert_eq!(parse_segment_file("00000000000000000005.index.swap"), None);
}

#[test]
fn retention_deleting_segments_under_a_running_clean_makes_it_abandon_its_swap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z-0");
    let p = path.clone();
    block_on(async move {
        let log = Rc::new(PartitionLog::open(&p, small_log_config()).unwrap());
        let appended = append_updates(&log, 120, 1000).await;
        let segments = log.segment_count();
        let cleaner = {
            let log = log.clone();
            ringbroker_runtime::spawn(async move {
                let mut stats = CleanStats::default();
                log.clean_pass(&clean_config(10_000), &mut stats, None)
                    .await
            })
        };
        // Let the pass get into its rewrite, then retention drops the oldest segments.
        while !log.state.borrow().cleaning {
            ringbroker_runtime::yield_now().await;
        }
        for _ in 0..4 {
            ringbroker_runtime::yield_now().await;
        }
        log.set_config(LogConfig {
            retention_bytes: Some(3000),
            ..small_log_config()
        });
        assert!(log.enforce_retention(0).unwrap() > 0);
        let pass = cleaner.await.unwrap().unwrap();
        assert!(matches!(pass, Pass::Abandoned));
        assert!(log.segment_count() < segments);
        let start = log.log_start_offset();
        let want: Vec<Entry> = appended.into_iter().filter(|e| e.0 >= start).collect();
        assert_eq!(read_all(&log).await.0, want);
        assert_eq!(log.cleanable_state().first_dirty_offset, start);
        assert!(!log.state.borrow().cleaning);
    })
    .unwrap();
    let names: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".cleaned")), "{names:?}");
}

/// Where the crash-hook child process finds its log.
const CHILD_DIR_VAR: &str = "RINGBROKER_TEST_CLEAN_CHILD_DIR";

#[test]
#[ignore = "run as a child process by the_crash_hook_aborts_mid_clean_and_a_reopen_recovers"]
fn crash_hook_child_cleans_its_log() {
    let path = PathBuf::from(std::env::var(CHILD_DIR_VAR).expect("run by the parent test"));
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        log.clean(&clean_config(10_000)).await.unwrap();
    })
    .unwrap();
    panic!("RINGBROKER_TEST_CLEAN_CRASH_AT did not abort the cleaning");
}

#[test]
fn the_crash_hook_aborts_mid_clean_and_a_reopen_recovers() {
    use std::os::unix::process::ExitStatusExt;
    for (point, decided) in [
        ("cleaned-written", false),
        ("swap-renamed", true),
        ("old-deleted", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h-0");
        let p = path.clone();
        let (old, new) = block_on(async move {
            let log = PartitionLog::open(&p, small_log_config()).unwrap();
            let appended = append_updates(&log, 100, 1000).await;
            log.close().await.unwrap();
            let new = expected(&appended, log.active_segment_base());
            (appended, new)
        })
        .unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "log::clean::tests::crash_hook_child_cleans_its_log",
                "--ignored",
                "--nocapture",
            ])
            .env("RINGBROKER_TEST_CLEAN_CRASH_AT", point)
            .env(CHILD_DIR_VAR, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{point}: {status:?}");
        block_on(async move {
            let log = PartitionLog::open(&path, small_log_config()).unwrap();
            let (got, _) = read_all(&log).await;
            if decided {
                assert_ne!(got, old, "{point}");
                assert_cleaned_prefix(&got, &old, &new);
            } else {
                assert_eq!(got, old, "{point}");
            }
        })
        .unwrap();
    }
}

#[test]
fn rebuilt_batches_keep_offsets_and_producer_fields_with_new_timestamps_count_and_crc() {
    let recs: [KeyValue; 4] = [
        (Some(b"a"), Some(b"1")),
        (Some(b"b"), Some(b"2")),
        (Some(b"c"), None),
        (Some(b"d"), Some(b"4")),
    ];
    for codec in CODECS {
        for append_time in [false, true] {
            let mut b = keyed_batch(codec, 5000, &recs).to_vec();
            b[..8].copy_from_slice(&100i64.to_be_bytes());
            b[43..51].copy_from_slice(&77i64.to_be_bytes()); // producer id
            b[53..57].copy_from_slice(&9i32.to_be_bytes()); // base sequence
            if append_time {
                let attributes = codec.attribute_bits() | ATTR_LOG_APPEND_TIME;
                b[21..23].copy_from_slice(&attributes.to_be_bytes());
                b[35..43].copy_from_slice(&9999i64.to_be_bytes());
            }
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            let frame = BatchFrame::parse(&b).unwrap();
            let (c, section, records) = batch_records(&b, &frame).unwrap();
            assert_eq!(c, codec);
            let all = rebuild(&b, &frame, c, &section, &records, &[true; 4]).unwrap();
            assert!(matches!(all, Filtered::Same));
            let none = rebuild(&b, &frame, c, &section, &records, &[false; 4]).unwrap();
            assert!(matches!(none, Filtered::Empty));
            let Filtered::Rebuilt(out) = rebuild(
                &b,
                &frame,
                c,
                &section,
                &records,
                &[false, true, true, false],
            )
            .unwrap() else {
                panic!("rebuilt");
            };
            let f = BatchFrame::parse(&out).unwrap();
            assert!(f.crc_matches(&out));
            assert_eq!(
                (f.base_offset, f.next_offset()),
                (100, 104),
                "last offset kept"
            );
            assert_eq!(f.attributes, frame.attributes);
            assert_eq!(out[43..57], b[43..57], "producer id, epoch, base sequence");
            assert_eq!(i32::from_be_bytes(out[57..61].try_into().unwrap()), 2);
            let (_, section2, kept) = batch_records(&out, &f).unwrap();
            let offsets: Vec<i64> = kept.iter().map(|r| r.offset_delta).collect();
            assert_eq!(offsets, vec![1, 2]);
            assert!(kept[1].tombstone);
            assert_eq!(&section2[kept[0].key.clone().unwrap()], b"b");
            let base_ts = i64::from_be_bytes(out[27..35].try_into().unwrap());
            if append_time {
                assert_eq!((base_ts, f.max_timestamp), (5000, 9999));
            } else {
                // Records had timestamps 5000 + i: the kept ones 5001 and 5002.
                assert_eq!((base_ts, f.max_timestamp), (5001, 5002));
                let ts: Vec<i64> = kept.iter().map(|r| base_ts + r.ts_delta).collect();
                assert_eq!(ts, vec![5001, 5002]);
            }
        }
    }
}

#[test]
fn a_pass_stopped_by_the_map_leaves_the_rest_dirty_in_the_cleanable_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        append_updates(&log, 120, 1000).await;
        let closed_bytes = |log: &PartitionLog| -> u64 {
            let st = log.state.borrow();
            st.segments[..st.segments.len() - 1]
                .iter()
                .map(|s| s.committed_bytes)
                .sum()
        };
        let before = log.cleanable_state();
        assert_eq!(before.dirty_bytes, closed_bytes(&log));
        let first_max = log.state.borrow().segments[0].max_timestamp;
        assert_eq!(before.oldest_dirty_timestamp_ms, Some(first_max));
        let config = CleanConfig {
            map_bytes_max: 4 * map_entry_bytes(6),
            ..clean_config(10_000)
        };
        let mut stats = CleanStats::default();
        let pass = log.clean_pass(&config, &mut stats, None).await.unwrap();
        assert!(matches!(pass, Pass::Cleaned { more: true }));
        let after = log.cleanable_state();
        assert!(after.first_dirty_offset > 0);
        assert!(after.first_dirty_offset < log.active_segment_base());
        assert!(after.clean_bytes > 0 && after.dirty_bytes > 0);
        assert_eq!(after.clean_bytes + after.dirty_bytes, closed_bytes(&log));
        // Persisted: a reopen starts from the same first dirty offset.
        drop(log);
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        assert_eq!(
            log.cleanable_state().first_dirty_offset,
            after.first_dirty_offset
        );
    })
    .unwrap();
}

#[test]
fn the_duty_cycle_pauses_in_proportion_to_the_slice_and_never_for_long() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    assert_eq!(Budget::new(1, 20).pause_after(ms(1)), ms(4));
    assert_eq!(Budget::new(1, 50).pause_after(ms(3)), ms(3));
    assert_eq!(Budget::new(1, 100).pause_after(ms(3)), Duration::ZERO);
    // Out-of-range shares are clamped, and a slice stretched by a stall pauses at most 1 s.
    assert_eq!(Budget::new(1, 0).pause_after(ms(1)), ms(99));
    assert_eq!(Budget::new(1, 500).pause_after(ms(1)), Duration::ZERO);
    assert_eq!(Budget::new(1, 20).pause_after(ms(10_000)), PAUSE_MAX);
}

// ---- review fixes ---------------------------------------------------------------------------

#[test]
fn a_read_pending_while_a_cleaning_merges_segments_still_finds_the_next_segments_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rm-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        // Unique keys between updates of one key: segments ending in an update of it end in
        // a gap once cleaned, and keep their unique keys.
        let append = |from: usize, to: usize| {
            let log = &log;
            async move {
                for i in from..to {
                    let key = if i % 2 == 0 {
                        format!("u-{i}")
                    } else {
                        "s".into()
                    };
                    let b = keyed_batch(Codec::None, 1000, &[(Some(key.as_bytes()), Some(b"v"))]);
                    log.append_batch(b, 1).await.unwrap();
                }
            }
        };
        append(0, 120).await;
        // Groups of one segment each: the cleaned segments end in gaps, none merged.
        let unmerged = CleanConfig {
            segment_bytes_max: 700,
            ..clean_config(10_000)
        };
        log.clean(&unmerged).await.unwrap();
        append(120, 160).await;
        // An offset in the gap at the end of a non-empty segment A, whose next segment B
        // holds a batch: (o, B's base).
        let mut found = None;
        for o in 0..log.active_segment_base() {
            let r = log.read(o, 1).await.unwrap();
            let f = BatchFrame::parse(&r.records).unwrap();
            let st = log.state.borrow();
            let i = st.segments.partition_point(|s| s.base_offset <= o) - 1;
            let next = &st.segments[i + 1];
            if st.segments[i].committed_bytes > 0
                && next.base_offset <= f.base_offset
                && next.committed_bytes > 0
                && i + 2 < st.segments.len()
            {
                found = Some((o, next.base_offset));
                break;
            }
        }
        let (o, b_base) = found.unwrap_or_else(|| {
            let st = log.state.borrow();
            let segs: Vec<_> = st
                .segments
                .iter()
                .map(|s| (s.base_offset, s.committed_bytes))
                .collect();
            panic!("no gap at the end of a segment: {segs:?}")
        });
        use std::future::Future;
        let mut read = std::pin::pin!(log.read(o, 1));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            read.as_mut().poll(&mut cx).is_pending(),
            "the read waits for the disk"
        );
        // And so does a timestamp lookup from the same offset.
        let mut by_time = std::pin::pin!(log.batch_for_timestamp(0, o));
        assert!(by_time.as_mut().poll(&mut cx).is_pending());
        // A cleaning merging A and B runs while the read is pending.
        log.clean(&clean_config(20_000)).await.unwrap();
        {
            let st = log.state.borrow();
            let i = st.segments.partition_point(|s| s.base_offset <= o) - 1;
            assert!(
                st.segments
                    .get(i + 1)
                    .is_none_or(|n| n.base_offset > b_base),
                "A and B were merged"
            );
        }
        let got = read.await.unwrap();
        let want = log.read(o, 1).await.unwrap();
        let (got, want) = (
            BatchFrame::parse(&got.records).unwrap(),
            BatchFrame::parse(&want.records).unwrap(),
        );
        assert!(want.base_offset >= b_base);
        assert_eq!(
            (got.base_offset, got.next_offset()),
            (want.base_offset, want.next_offset()),
            "the first surviving batch at or after {o}"
        );
        let by_time = by_time.await.unwrap().expect("a batch");
        let by_time = BatchFrame::parse(&by_time).unwrap();
        assert_eq!(
            by_time.base_offset, want.base_offset,
            "timestamp lookup from {o}"
        );
    })
    .unwrap();
}

#[test]
fn a_multi_pass_cleaning_keeps_every_tombstone_it_cleans_for_the_first_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mt-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        // Early tombstones (the latest records of their keys), then many other keys: the
        // first pass (a map of 3 keys) cleans the tombstones for the first time, the later
        // passes must not count them cleaned once.
        let mut appended = Vec::new();
        for i in 0..90 {
            let key = match i {
                0..4 => format!("t-{}", i % 2),
                _ => format!("u-{i}"),
            };
            let value = (!(2..4).contains(&i)).then_some(b"v".to_vec());
            let b = keyed_batch(
                Codec::None,
                1000,
                &[(Some(key.as_bytes()), value.as_deref())],
            );
            let o = log.append_batch(b, 1).await.unwrap();
            appended.push((o, Some(key.into_bytes()), value));
        }
        let active_base = log.active_segment_base();
        let config = CleanConfig {
            map_bytes_max: 3 * map_entry_bytes(6),
            delete_retention_ms: 100,
            ..clean_config(1_000_000)
        };
        let stats = log.clean(&config).await.unwrap();
        let want = expected(&appended, active_base);
        assert_eq!(want.iter().filter(|e| e.2.is_none()).count(), 2);
        assert_eq!(stats.tombstones_removed, 0);
        assert_eq!(read_all(&log).await.0, want);
        assert_eq!(log.cleanable_state().first_dirty_offset, active_base);
    })
    .unwrap();
}

#[test]
fn a_cleaning_makes_the_log_durable_up_to_the_cleaned_range_before_swapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sy-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        append_updates(&log, 90, 1000).await;
        assert!(log.synced_offset() < log.active_segment_base());
        let stats = log.clean(&clean_config(10_000)).await.unwrap();
        assert!(stats.bytes_written > 0);
        assert!(
            log.synced_offset() >= stats.first_dirty_offset,
            "synced {} < map end {}",
            log.synced_offset(),
            stats.first_dirty_offset
        );
    })
    .unwrap();
}

#[test]
fn a_failed_swap_fails_the_log_for_good_and_stops_retention_and_segment_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sf-0");
    let p = path.clone();
    let appended = block_on(async move {
        let config = LogConfig {
            retention_ms: Some(1),
            ..small_log_config()
        };
        let log = PartitionLog::open(&p, config).unwrap();
        let appended = append_updates(&log, 90, 1000).await;
        let mut stats = CleanStats::default();
        let pass = log
            .clean_pass(
                &clean_config(10_000),
                &mut stats,
                Some(CrashPoint::SwapFailsAfterWriteFailure),
            )
            .await;
        assert!(pass.is_err());
        {
            let st = log.state.borrow();
            assert!(
                st.failed.as_deref().unwrap().contains("swap"),
                "{:?}",
                st.failed
            );
            assert!(!st.repairable);
        }
        let segments = log.segment_count();
        assert_eq!(log.enforce_retention(i64::MAX / 2).unwrap(), 0);
        assert_eq!(log.segment_count(), segments);
        let start = log.active_segment_base() - 1;
        assert!(log.synced_offset() >= start);
        let _ = log.delete_records_before(start).await;
        assert_eq!(log.segment_count(), segments, "no segment deleted by name");
        // The pending write failure does not get repaired by the next append.
        let batch = keyed_batch(Codec::None, 9000, &[(Some(b"k"), Some(b"v"))]);
        assert!(log.append_batch(batch, 1).await.is_err());
        appended
    })
    .unwrap();
    // A reopen finishes the swap: the latest record of every key is there.
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        let (got, _) = read_all(&log).await;
        let mut latest: HashMap<Vec<u8>, &Entry> = HashMap::new();
        for e in &appended {
            if let Some(k) = &e.1 {
                latest.insert(k.clone(), e);
            }
        }
        for e in latest.values() {
            if e.0 >= log.log_start_offset() {
                assert!(got.contains(e), "{e:?}");
            }
        }
    })
    .unwrap();
}

#[test]
fn a_batch_of_more_records_than_the_limit_is_not_parsed() {
    let section_of = |n: usize| {
        let mut section = Vec::new();
        let mut body = Vec::new();
        for i in 0..n {
            body.clear();
            body.push(0);
            put_varint(&mut body, 0);
            put_varint(&mut body, i as i64);
            put_varint(&mut body, -1);
            put_varint(&mut body, -1);
            put_varint(&mut body, 0);
            put_varint(&mut section, body.len() as i64);
            section.extend_from_slice(&body);
        }
        section
    };
    let at_limit = section_of(CLEAN_BATCH_RECORDS_MAX);
    assert_eq!(
        parse_records(&at_limit, CLEAN_BATCH_RECORDS_MAX as i32)
            .unwrap()
            .len(),
        CLEAN_BATCH_RECORDS_MAX
    );
    let over = section_of(CLEAN_BATCH_RECORDS_MAX + 1);
    assert!(parse_records(&over, CLEAN_BATCH_RECORDS_MAX as i32 + 1).is_none());
}

/// Every record the cleaner can read in the log: `(offset, key, value)`; and how many batches
/// it could not read.
async fn readable_entries(log: &PartitionLog) -> (Vec<Entry>, usize) {
    let (mut entries, mut unreadable) = (Vec::new(), 0);
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let r = log.read(offset, 1 << 20).await.unwrap();
        let mut at = 0;
        while at < r.records.len() {
            let frame = BatchFrame::parse(&r.records[at..]).unwrap();
            let batch = &r.records[at..at + frame.total_bytes];
            match batch_records(batch, &frame) {
                Some((_, section, records)) => {
                    for rec in &records {
                        let key = rec.key.clone().map(|k| section[k].to_vec());
                        let o = frame.base_offset + rec.offset_delta;
                        entries.push((o, key, value_of(&section, rec)));
                    }
                }
                None => unreadable += 1,
            }
            offset = frame.next_offset();
            at += frame.total_bytes;
        }
    }
    (entries, unreadable)
}

#[test]
fn no_tombstone_after_an_unreadable_batch_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ub-0");
    block_on(async move {
        let log = PartitionLog::open(&path, small_log_config()).unwrap();
        let put = |k: &'static [u8], v: Option<&'static [u8]>, ts: i64| {
            keyed_batch(Codec::None, ts, &[(Some(k), v)])
        };
        log.append_batch(put(b"j", Some(b"j1"), 1000), 1)
            .await
            .unwrap();
        log.append_batch(put(b"j", None, 1001), 1).await.unwrap();
        // k=k2 in a batch the cleaner cannot read (codec bits 7).
        let mut b = put(b"k", Some(b"k2"), 1002).to_vec();
        b[22] |= 0x7;
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        log.append_batch(Bytes::from(b), 1).await.unwrap();
        log.append_batch(put(b"k", None, 1003), 1).await.unwrap();
        let k_tombstone = 3;
        for i in 0..60 {
            log.append_batch(put(b"f", Some(b"filler"), 1100 + i), 1)
                .await
                .unwrap();
        }
        let config = CleanConfig {
            delete_retention_ms: 100,
            ..clean_config(100_000)
        };
        // The first cleaning keeps the tombstones (dirty); the second would remove them.
        log.clean(&config).await.unwrap();
        for i in 0..60 {
            log.append_batch(put(b"g", Some(b"filler"), 1200 + i), 1)
                .await
                .unwrap();
        }
        log.clean(&config).await.unwrap();
        let (entries, unreadable) = readable_entries(&log).await;
        assert_eq!(unreadable, 1, "the unreadable batch is copied as it is");
        assert!(
            entries.iter().any(|e| e.0 == k_tombstone && e.2.is_none()),
            "k's tombstone after the unreadable batch stays: {entries:?}"
        );
        assert!(
            !entries.iter().any(|e| e.1.as_deref() == Some(b"j")),
            "j's tombstone before it went: {entries:?}"
        );
    })
    .unwrap();
}

#[test]
fn recovery_cuts_a_segment_at_a_batch_whose_offsets_leave_its_range() {
    // (A trusted load walks only the headers after the last index entry: the damaged batch
    // of the non-last segment sits below one, so only a scan sees it.)
    for (jump, last_segment, recovery) in [
        (1_000i64, false, Recovery::Scan),
        (u32::MAX as i64 + 10, true, Recovery::Scan),
        (u32::MAX as i64 + 10, true, Recovery::TrustCleanShutdown),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rc-0");
        let p = path.clone();
        let (seg_base, victim_base, victim_position) = block_on(async move {
            let log = PartitionLog::open(&p, small_log_config()).unwrap();
            // (In the last segment, the damaged batch is the last one: after the last index entry.)
            append_updates(&log, if last_segment { 2 } else { 40 }, 1000).await;
            log.close().await.unwrap();
            let st = log.state.borrow();
            assert!(last_segment || st.segments.len() > 2);
            let seg = &st.segments[if last_segment {
                st.segments.len() - 1
            } else {
                0
            }];
            // The second batch of the segment.
            let mut header = [0u8; HEADER_BYTES];
            std::os::unix::fs::FileExt::read_exact_at(
                &std::fs::File::from(seg.log.try_clone().unwrap()),
                &mut header,
                0,
            )
            .unwrap();
            let first = BatchFrame::parse(&header).unwrap();
            (
                seg.base_offset,
                first.next_offset(),
                first.total_bytes as u64,
            )
        })
        .unwrap();
        // Its base offset (outside the CRC) jumps forward beyond the segment's range.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join(crate::segment::file_name(seg_base, "log")))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &file,
            &(victim_base + jump).to_be_bytes(),
            victim_position,
        )
        .unwrap();
        drop(file);
        block_on(async move {
            let log = PartitionLog::open_with(&path, small_log_config(), recovery).unwrap();
            assert_eq!(
                log.high_watermark(),
                victim_base,
                "{recovery:?} jump {jump}: cut at the damaged batch"
            );
        })
        .unwrap();
    }
}

#[test]
fn rebuilt_batches_keep_the_partition_leader_epoch() {
    // Kafka's cleaner keeps partitionLeaderEpoch (bytes 12..16, outside the CRC): followers
    // and OffsetsForLeaderEpoch rely on it after a cleaning too.
    let recs: [KeyValue; 3] = [
        (Some(b"a"), Some(b"1")),
        (Some(b"b"), Some(b"2")),
        (Some(b"a"), Some(b"3")),
    ];
    for codec in CODECS {
        let mut b = keyed_batch(codec, 5000, &recs).to_vec();
        b[12..16].copy_from_slice(&7i32.to_be_bytes());
        let frame = BatchFrame::parse(&b).unwrap();
        let (c, section, records) = batch_records(&b, &frame).unwrap();
        let Filtered::Rebuilt(out) =
            rebuild(&b, &frame, c, &section, &records, &[false, true, true]).unwrap()
        else {
            panic!("rebuilt");
        };
        assert!(BatchFrame::parse(&out).unwrap().crc_matches(&out));
        assert_eq!(out[12..16], 7i32.to_be_bytes(), "{codec:?}");
    }
}
