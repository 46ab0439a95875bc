use super::*;
use crate::log::epochs;
use crate::log::tests::{batch, slice_bytes};
use crate::log::{LogConfig, Recovery};
use ringbroker_runtime::block_on;
use std::path::Path;
use std::rc::Rc;

/// A batch of `n` records based at `base` of leader epoch `epoch`, as a leader's log holds it
/// (CRC valid: both fields are outside it).
fn leader_batch(base: i64, n: usize, epoch: i32) -> Vec<u8> {
    let mut b = batch(n, 10, 1000 + base).to_vec();
    b[..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    b
}

fn concat(batches: &[Vec<u8>]) -> Bytes {
    Bytes::from(batches.concat())
}

/// `(base offset, next offset, leader epoch)` of every batch in `bytes`, each CRC-checked.
fn headers(bytes: &[u8]) -> Vec<(i64, i64, i32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let f = BatchFrame::parse(&bytes[at..]).unwrap();
        assert!(f.crc_matches(&bytes[at..at + f.total_bytes]), "CRC at {at}");
        out.push((f.base_offset, f.next_offset(), batch_epoch(&bytes[at..])));
        at += f.total_bytes;
    }
    out
}

/// Every batch of the log, read from its start to its end.
async fn log_bytes(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, 1 << 20).await.unwrap();
        assert!(!r.records.is_empty());
        offset = headers(&r.records).last().unwrap().1;
        out.extend_from_slice(&r.records);
    }
    out
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

fn segment_files(dir: &Path) -> Vec<i64> {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| crate::segment::parse_log_name(e.unwrap().file_name().to_str()?))
        .collect();
    bases.sort_unstable();
    bases
}

/// 60 batches of 2 records (offsets 0..120) in 6 segments of 10 batches (bases 0, 20, …,
/// 100): epoch 1 for offsets 0..40, 3 for 40..80, 4 for 80..120.
fn sixty_batches() -> Vec<Vec<u8>> {
    (0..60)
        .map(|i| {
            let epoch = match i {
                0..20 => 1,
                20..40 => 3,
                _ => 4,
            };
            leader_batch(2 * i, 2, epoch)
        })
        .collect()
}

#[test]
fn replicated_appends_keep_the_leaders_bytes_offsets_gaps_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    let all = block_on(async move {
        let log = PartitionLog::open(&p, config()).unwrap();
        // A gap (a compacted leader): 5..10 missing.
        let first = concat(&[
            leader_batch(0, 3, 0),
            leader_batch(3, 2, 0),
            leader_batch(10, 1, 2),
        ]);
        assert_eq!(log.append_replicated(first.clone()).await.unwrap(), 11);
        assert_eq!(log.log_end_offset(), 11);
        assert_eq!(log_bytes(&log).await, first.to_vec());
        let r = log.read(6, 1).await.unwrap();
        assert_eq!(
            headers(&r.records)[0].0,
            10,
            "an offset in a gap reads the next batch"
        );
        assert_eq!(log.epoch_entries(), vec![(0, 0), (2, 10)]);
        // Many batches in one call, rolling segments on the way.
        let more: Vec<Vec<u8>> = (0..100)
            .map(|i| leader_batch(11 + 2 * i, 2, if i < 50 { 2 } else { 5 }))
            .collect();
        let more = concat(&more);
        assert_eq!(log.append_replicated(more.clone()).await.unwrap(), 211);
        assert!(log.segment_count() > 5, "{}", log.segment_count());
        let mut all = first.to_vec();
        all.extend_from_slice(&more);
        assert_eq!(log_bytes(&log).await, all);
        assert_eq!(log.epoch_entries(), vec![(0, 0), (2, 10), (5, 111)]);
        assert_eq!(log.latest_epoch(), Some(5));
        for offset in [0, 4, 11, 100, 110, 111, 210] {
            let r = log.read(offset, 1).await.unwrap();
            let (base, next, _) = headers(&r.records)[0];
            assert!(
                base <= offset && offset < next,
                "{offset} in [{base}, {next})"
            );
        }
        log.sync_to(211).await.unwrap();
        log.close().await.unwrap();
        all
    })
    .unwrap();
    for recovery in [Recovery::Scan, Recovery::TrustCleanShutdown] {
        let (p, all) = (path.clone(), all.clone());
        block_on(async move {
            let log = PartitionLog::open_with(&p, config(), recovery).unwrap();
            assert_eq!(log.log_end_offset(), 211, "{recovery:?}");
            assert_eq!(log_bytes(&log).await, all);
            assert_eq!(log.epoch_entries(), vec![(0, 0), (2, 10), (5, 111)]);
            if recovery == Recovery::TrustCleanShutdown {
                // Appends continue after the last replicated batch.
                assert_eq!(log.append_batch(batch(1, 5, 0), 1).await.unwrap(), 211);
            }
        })
        .unwrap();
    }
}

#[test]
fn replicated_appends_refuse_overlaps_and_corrupt_batches_without_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    block_on(async move {
        let log = PartitionLog::open(&path, config()).unwrap();
        let first = concat(&[leader_batch(0, 3, 1)]);
        assert_eq!(log.append_replicated(first.clone()).await.unwrap(), 3);
        let segment = path.join("00000000000000000000.log");
        let len = std::fs::metadata(&segment).unwrap().len();
        let epochs_file = std::fs::read(path.join(epochs::FILE_NAME)).unwrap();
        let unchanged = |log: &PartitionLog| {
            assert_eq!(log.log_end_offset(), 3);
            assert_eq!(std::fs::metadata(&segment).unwrap().len(), len);
            assert_eq!(log.epoch_entries(), vec![(1, 0)]);
            assert_eq!(
                std::fs::read(path.join(epochs::FILE_NAME)).unwrap(),
                epochs_file
            );
        };
        // Overlapping the log.
        let r = log
            .append_replicated(concat(&[leader_batch(2, 1, 9)]))
            .await;
        assert!(
            matches!(
                r,
                Err(AppendError::OutOfOrder {
                    expected: 3,
                    got: 2
                })
            ),
            "{r:?}"
        );
        unchanged(&log);
        // Overlapping each other (the first one would fit).
        let r = log
            .append_replicated(concat(&[leader_batch(3, 2, 9), leader_batch(4, 1, 9)]))
            .await;
        assert!(
            matches!(
                r,
                Err(AppendError::OutOfOrder {
                    expected: 5,
                    got: 4
                })
            ),
            "{r:?}"
        );
        unchanged(&log);
        // A bad CRC in the second batch.
        let mut bad = leader_batch(5, 2, 9);
        bad[70] ^= 0x40;
        let r = log
            .append_replicated(concat(&[leader_batch(3, 2, 9), bad]))
            .await;
        assert!(matches!(r, Err(AppendError::Corrupt { .. })), "{r:?}");
        unchanged(&log);
        // Not a v2 batch.
        let mut old = leader_batch(3, 2, 9);
        old[16] = 1;
        let r = log.append_replicated(concat(&[old])).await;
        assert!(matches!(r, Err(AppendError::Corrupt { .. })), "{r:?}");
        unchanged(&log);
        // A negative base offset.
        let r = log
            .append_replicated(concat(&[leader_batch(-5, 2, 9)]))
            .await;
        assert!(r.is_err());
        unchanged(&log);
        // Still appends what fits.
        let next = concat(&[leader_batch(3, 2, 9)]);
        assert_eq!(log.append_replicated(next.clone()).await.unwrap(), 5);
        assert_eq!(log.epoch_entries(), vec![(1, 0), (9, 3)]);
        assert_eq!(log_bytes(&log).await, [first, next].concat());
    })
    .unwrap();
}

#[test]
fn a_partial_trailing_batch_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    block_on(async move {
        let log = PartitionLog::open(&path, config()).unwrap();
        let whole = leader_batch(0, 2, 1);
        let next = leader_batch(2, 2, 1);
        // Its header whole, its records cut.
        let bytes = Bytes::from([whole.clone(), next[..70].to_vec()].concat());
        assert_eq!(log.append_replicated(bytes).await.unwrap(), 2);
        assert_eq!(log_bytes(&log).await, whole);
        // Not even a whole header.
        let bytes = Bytes::from([next.clone(), leader_batch(4, 1, 1)[..30].to_vec()].concat());
        assert_eq!(log.append_replicated(bytes).await.unwrap(), 4);
        // Nothing whole at all.
        let bytes = Bytes::from(leader_batch(4, 1, 1)[..65].to_vec());
        assert_eq!(log.append_replicated(bytes).await.unwrap(), 4);
        assert_eq!(log_bytes(&log).await, [whole, next].concat());
    })
    .unwrap();
}

#[test]
fn truncation_cuts_mid_segment_and_across_segments_and_the_log_reopens_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    let batches = sixty_batches();
    let expected = block_on(async move {
        let log = PartitionLog::open(&p, config()).unwrap();
        assert_eq!(log.append_replicated(concat(&batches)).await.unwrap(), 120);
        assert_eq!(segment_files(&p), vec![0, 20, 40, 60, 80, 100]);
        assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 40), (4, 80)]);
        log.sync_to(120).await.unwrap();
        // At or past the end: nothing changes.
        assert_eq!(log.truncate_to(500).await.unwrap(), 120);
        assert_eq!(log.truncate_to(120).await.unwrap(), 120);
        // Mid-segment, inside a batch: the straddling batch [90, 92) goes whole.
        assert_eq!(log.truncate_to(91).await.unwrap(), 90);
        assert_eq!(log.log_end_offset(), 90);
        assert_eq!(segment_files(&p), vec![0, 20, 40, 60, 80]);
        assert_eq!(
            std::fs::metadata(p.join("00000000000000000080.log"))
                .unwrap()
                .len(),
            5 * 95
        );
        assert_eq!(log_bytes(&log).await, batches[..45].concat());
        assert!(log.read(88, 10).await.is_ok());
        assert!(log.read(90, 10).await.unwrap().records.is_empty());
        assert!(matches!(
            log.read(91, 10).await,
            Err(ReadError::OutOfRange { .. })
        ));
        assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 40), (4, 80)]);
        // A wait for a sync of what went ends (it would spin on fdatasyncs for ever).
        let waited = op::timeout(Duration::from_secs(2), log.sync_to(120)).await;
        assert!(
            matches!(
                waited,
                Some(Err(AppendError::Truncated {
                    offset: 120,
                    log_end: 90
                }))
            ),
            "{waited:?}"
        );
        log.sync_to(90).await.unwrap();
        // Across segment boundaries, to a batch boundary: epoch 4's entry goes.
        assert_eq!(log.truncate_to(50).await.unwrap(), 50);
        assert_eq!(segment_files(&p), vec![0, 20, 40]);
        assert_eq!(log_bytes(&log).await, batches[..25].concat());
        assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 40)]);
        assert_eq!(log.end_offset_for_epoch(3), (3, 50));
        // At a segment's base: it stays, empty; epoch 3 started there and goes.
        assert_eq!(log.truncate_to(40).await.unwrap(), 40);
        assert_eq!(segment_files(&p), vec![0, 20, 40]);
        assert_eq!(log.epoch_entries(), vec![(1, 0)]);
        // Appends continue at the new end, replicated and not.
        let next = leader_batch(40, 2, 6);
        assert_eq!(
            log.append_replicated(concat(std::slice::from_ref(&next)))
                .await
                .unwrap(),
            42
        );
        assert_eq!(log.append_batch(batch(1, 10, 7), 1).await.unwrap(), 42);
        assert_eq!(log.epoch_entries(), vec![(1, 0), (6, 40)]);
        let all = log_bytes(&log).await;
        assert_eq!(
            all[..all.len() - 78],
            [batches[..20].concat(), next].concat()
        );
        log.close().await.unwrap();
        all
    })
    .unwrap();
    for recovery in [Recovery::Scan, Recovery::TrustCleanShutdown] {
        let (p, expected) = (path.clone(), expected.clone());
        block_on(async move {
            let log = PartitionLog::open_with(&p, config(), recovery).unwrap();
            assert_eq!(log.log_end_offset(), 43, "{recovery:?}");
            assert_eq!(log_bytes(&log).await, expected);
            assert_eq!(log.epoch_entries(), vec![(1, 0), (6, 40)]);
        })
        .unwrap();
    }
}

#[test]
fn a_crash_after_a_truncation_recovers_the_truncated_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    let batches = sixty_batches();
    let expected = block_on(async move {
        let log = PartitionLog::open(&p, config()).unwrap();
        log.append_replicated(concat(&batches)).await.unwrap();
        log.sync_to(120).await.unwrap();
        // A recovery checkpoint past where the cut will be.
        let c = log.checkpoint_recovery_point().await.unwrap().unwrap();
        assert!(c.offset > 70, "{c:?}");
        assert_eq!(log.truncate_to(71).await.unwrap(), 70);
        // The checkpoint on disk no longer promises what went.
        let (_, c) = crate::checkpoint::read(&p).unwrap().unwrap();
        assert!(c.offset <= 70 && c.segment_base <= 60, "{c:?}");
        let next = leader_batch(70, 3, 7);
        assert_eq!(
            log.append_replicated(concat(std::slice::from_ref(&next)))
                .await
                .unwrap(),
            73
        );
        log.sync_to(73).await.unwrap();
        let all = log_bytes(&log).await;
        assert_eq!(all, [batches[..35].concat(), next].concat());
        // No close: a crash.
        all
    })
    .unwrap();
    block_on(async move {
        let log = PartitionLog::open_with(&path, config(), Recovery::Scan).unwrap();
        assert_eq!(log.log_end_offset(), 73);
        assert_eq!(log_bytes(&log).await, expected);
        assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 40), (7, 70)]);
        assert_eq!(segment_files(&path), vec![0, 20, 40, 60]);
    })
    .unwrap();
}

#[test]
fn truncation_is_refused_while_appends_are_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    block_on(async move {
        let log = Rc::new(PartitionLog::open(&path, config()).unwrap());
        log.append_replicated(concat(&[leader_batch(0, 4, 1)]))
            .await
            .unwrap();
        let append = {
            let log = log.clone();
            spawn(async move { log.append_batch(batch(1, 10, 0), 1).await })
        };
        // The append reserved its offsets and its write is in flight.
        ringbroker_runtime::yield_now().await;
        let r = log.truncate_to(2).await;
        assert!(matches!(r, Err(AppendError::Busy(_))), "{r:?}");
        let r = log.truncate_fully_and_start_at(100).await;
        assert!(matches!(r, Err(AppendError::Busy(_))), "{r:?}");
        assert_eq!(append.await.unwrap().unwrap(), 4);
        assert_eq!(log.truncate_to(2).await.unwrap(), 0);
        assert_eq!(log.log_end_offset(), 0);
    })
    .unwrap();
}

#[test]
fn a_full_truncation_restarts_the_log_empty_at_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    block_on(async move {
        let log = PartitionLog::open(&p, config()).unwrap();
        log.append_replicated(concat(&sixty_batches()))
            .await
            .unwrap();
        log.truncate_fully_and_start_at(1000).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (1000, 1000));
        assert_eq!(segment_files(&p), vec![1000]);
        assert_eq!(log.segment_count(), 1);
        assert!(log.epoch_entries().is_empty());
        assert!(log.read(1000, 100).await.unwrap().records.is_empty());
        assert!(matches!(
            log.read(5, 100).await,
            Err(ReadError::OutOfRange { .. })
        ));
        let next = leader_batch(1000, 2, 4);
        assert_eq!(
            log.append_replicated(concat(std::slice::from_ref(&next)))
                .await
                .unwrap(),
            1002
        );
        assert_eq!(log.epoch_entries(), vec![(4, 1000)]);
        log.sync_to(1002).await.unwrap();
        // A cut at or below the log start empties the log at its start.
        assert_eq!(log.truncate_to(1000).await.unwrap(), 1000);
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (1000, 1000));
        assert!(log.epoch_entries().is_empty());
        log.append_replicated(concat(&[next])).await.unwrap();
        log.sync_to(1002).await.unwrap();
        // No close: a crash.
    })
    .unwrap();
    let log = PartitionLog::open_with(&path, config(), Recovery::Scan).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (1000, 1002));
    assert_eq!(log.epoch_entries(), vec![(4, 1000)]);
}

#[test]
fn a_leader_stamps_its_epoch_into_appended_batches_and_answers_offsets_for_leader_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    block_on(async move {
        let log = PartitionLog::open(&p, config()).unwrap();
        // Before any leader epoch: the batch's own epoch, bytes unchanged.
        let mut own = batch(2, 10, 0).to_vec();
        own[12..16].copy_from_slice(&0x0102_0304i32.to_be_bytes());
        assert_eq!(
            log.append_batch(Bytes::from(own.clone()), 2).await.unwrap(),
            0
        );
        assert_eq!(log.read(0, 1).await.unwrap().records.to_vec(), own);
        assert!(log.epoch_entries().is_empty());
        assert_eq!(log.end_offset_for_epoch(0), (-1, -1));

        log.begin_leader_epoch(5).unwrap();
        assert_eq!(log.epoch_entries(), vec![(5, 2)]);
        let on_disk = epochs::read(&p).unwrap().unwrap();
        assert_eq!(on_disk.entries(), &[(5, 2)], "persisted before returning");
        assert_eq!(log.append_batch(batch(1, 10, 0), 1).await.unwrap(), 2);
        let r = log.read(2, 1).await.unwrap();
        assert_eq!(headers(&r.records), vec![(2, 3, 5)], "stamped, CRC valid");
        // Again the same epoch: no new entry.
        log.begin_leader_epoch(5).unwrap();
        log.begin_leader_epoch(7).unwrap();
        assert_eq!(log.append_batch(batch(2, 10, 0), 2).await.unwrap(), 3);
        assert_eq!(log.append_batch(batch(1, 10, 0), 1).await.unwrap(), 5);
        let r = log.read(3, 1 << 20).await.unwrap();
        assert_eq!(headers(&r.records), vec![(3, 5, 7), (5, 6, 7)]);
        assert_eq!(log.epoch_entries(), vec![(5, 2), (7, 3)]);
        assert_eq!(log.latest_epoch(), Some(7));
        // OffsetsForLeaderEpoch, as Kafka answers it.
        assert_eq!(log.end_offset_for_epoch(7), (7, 6));
        assert_eq!(log.end_offset_for_epoch(5), (5, 3));
        assert_eq!(log.end_offset_for_epoch(6), (5, 3));
        assert_eq!(log.end_offset_for_epoch(4), (4, 2));
        assert_eq!(log.end_offset_for_epoch(8), (-1, -1));
        assert_eq!(log.end_offset_for_epoch(-1), (-1, -1));
        // A leader never goes back in epochs.
        assert!(log.begin_leader_epoch(6).is_err());
        assert_eq!(log.epoch_entries(), vec![(5, 2), (7, 3)]);
        log.close().await.unwrap();
    })
    .unwrap();
    let log = PartitionLog::open(&path, config()).unwrap();
    assert_eq!(log.epoch_entries(), vec![(5, 2), (7, 3)]);
    assert_eq!(log.end_offset_for_epoch(5), (5, 3));
}

/// What walking every batch header gives (the reference for the bounded rebuild).
fn walked_epochs(batches: &[Vec<u8>]) -> Vec<(i32, i64)> {
    let mut e = epochs::Epochs::default();
    for b in batches {
        e.assign(batch_epoch(b), BatchFrame::parse(b).unwrap().base_offset);
    }
    e.entries().to_vec()
}

#[test]
fn the_epoch_checkpoint_survives_reopen_and_is_rebuilt_from_headers_when_deleted_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    // 400 one-record batches over many segments, index entries every 2 batches; epochs
    // change at irregular places, at a segment's first batch (13 per segment: 117) and at
    // the last batch; some batches of single-node clients carry -1.
    let batches: Vec<Vec<u8>> = (0..400)
        .map(|i| {
            let epoch = match i {
                0..3 => -1,
                3..37 => 0,
                37..38 => 2,
                38..117 => 3,
                117..250 => 8,
                250..251 => 9,
                251..399 => 12,
                _ => 13,
            };
            leader_batch(i, 1, epoch)
        })
        .collect();
    let expected = walked_epochs(&batches);
    assert_eq!(expected.len(), 7);
    let p = path.clone();
    let b = batches.clone();
    let cfg = LogConfig {
        index_interval_bytes: 100,
        ..config()
    };
    let c = cfg.clone();
    block_on(async move {
        let log = PartitionLog::open(&p, c).unwrap();
        log.append_replicated(concat(&b)).await.unwrap();
        assert!(log.segment_count() > 20);
        log.close().await.unwrap();
    })
    .unwrap();
    let file = path.join(epochs::FILE_NAME);
    let written = std::fs::read_to_string(&file).unwrap();
    let log = PartitionLog::open(&path, cfg.clone()).unwrap();
    assert_eq!(log.epoch_entries(), expected);
    drop(log);
    std::fs::remove_file(&file).unwrap();
    let log = PartitionLog::open(&path, cfg.clone()).unwrap();
    assert_eq!(log.epoch_entries(), expected, "rebuilt from the headers");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
    drop(log);
    std::fs::write(&file, "0\n2\n7 junk\n").unwrap();
    let log = PartitionLog::open(&path, cfg.clone()).unwrap();
    assert_eq!(log.epoch_entries(), expected, "rebuilt over a damaged file");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
    drop(log);
    // Entries past the recovered end (data a crash took) are dropped at open.
    std::fs::write(&file, written.replace("0\n8\n", "0\n9\n") + "20 500\n").unwrap();
    let log = PartitionLog::open(&path, cfg).unwrap();
    assert_eq!(log.epoch_entries(), expected);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
}

#[test]
fn a_log_without_epochs_writes_no_epoch_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    block_on(async move {
        let log = PartitionLog::open(&p, config()).unwrap();
        for i in 0..30 {
            log.append_batch(batch(1, 10, i), 1).await.unwrap();
        }
        log.close().await.unwrap();
    })
    .unwrap();
    let log = PartitionLog::open(&path, config()).unwrap();
    assert!(log.epoch_entries().is_empty());
    assert!(!path.join(epochs::FILE_NAME).exists());
}

#[test]
fn reads_until_an_end_offset_stop_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    block_on(async move {
        let log = PartitionLog::open(&path, config()).unwrap();
        let batches = sixty_batches();
        log.append_replicated(concat(&batches)).await.unwrap();
        let until = |offset, max_bytes, end| {
            let log = &log;
            async move {
                let r = log.read_slice_until(offset, max_bytes, end).await.unwrap();
                let bytes = if r.slice.is_some() {
                    slice_bytes(&r)
                } else {
                    Vec::new()
                };
                (bytes, r.high_watermark)
            }
        };
        // [6, 8) holds 7: it is not below 7.
        assert_eq!(until(0, 1 << 20, 7).await, (batches[..3].concat(), 7));
        assert_eq!(until(0, 1 << 20, 8).await, (batches[..4].concat(), 8));
        assert_eq!(until(3, 1 << 20, 8).await, (batches[1..4].concat(), 8));
        assert_eq!(until(6, 1 << 20, 7).await, (Vec::new(), 7));
        assert_eq!(until(7, 1 << 20, 7).await, (Vec::new(), 7));
        assert_eq!(until(9, 1 << 20, 7).await, (Vec::new(), 7));
        // max_bytes still applies, at least one batch.
        assert_eq!(until(0, 1, 8).await, (batches[..1].concat(), 8));
        assert_eq!(until(0, 200, 8).await, (batches[..2].concat(), 8));
        // An end in a later segment: up to the end of this one (10 batches).
        assert_eq!(until(10, 1 << 20, 75).await, (batches[5..10].concat(), 75));
        assert_eq!(until(60, 1 << 20, 75).await, (batches[30..37].concat(), 75));
        // At or past the log end: as read_slice.
        assert_eq!(
            until(100, 1 << 20, 120).await,
            (batches[50..60].concat(), 120)
        );
        assert_eq!(
            until(100, 1 << 20, 500).await,
            (batches[50..60].concat(), 120)
        );
        assert!(matches!(
            log.read_slice_until(121, 10, 100).await,
            Err(ReadError::OutOfRange { .. })
        ));
    })
    .unwrap();
}

#[test]
fn a_crash_right_after_a_truncation_recovers_the_truncated_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    let batches = sixty_batches();
    let b = batches.clone();
    block_on(async move {
        let log = PartitionLog::open(&p, config()).unwrap();
        log.append_replicated(concat(&b)).await.unwrap();
        log.sync_to(120).await.unwrap();
        log.checkpoint_recovery_point().await.unwrap().unwrap();
        assert_eq!(log.truncate_to(85).await.unwrap(), 84);
        // No close: a crash.
    })
    .unwrap();
    for recovery in [Recovery::Scan, Recovery::TrustCleanShutdown] {
        let (p, batches) = (path.clone(), batches.clone());
        block_on(async move {
            let log = PartitionLog::open_with(&p, config(), recovery).unwrap();
            assert_eq!(log.log_end_offset(), 84, "{recovery:?}");
            assert_eq!(log_bytes(&log).await, batches[..42].concat());
            assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 40), (4, 80)]);
            assert_eq!(segment_files(&p), vec![0, 20, 40, 60, 80]);
        })
        .unwrap();
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// The bounded rebuild finds what walking every header finds, wherever epochs change.
    #[test]
    fn rebuilt_epochs_match_a_walk_of_every_header(
        steps in proptest::collection::vec((1usize..4, 0i32..3), 1..160),
        segment_bytes in 300u64..3000,
        index_interval_bytes in 1u64..600,
    ) {
        let mut epoch = -1;
        let mut base = 0;
        let batches: Vec<Vec<u8>> = steps
            .iter()
            .map(|&(n, step)| {
                // Mostly the same epoch; sometimes a jump.
                if step == 2 || (epoch < 0 && step == 1) {
                    epoch += 1 + step;
                }
                let b = leader_batch(base, n, epoch);
                base += n as i64;
                b
            })
            .collect();
        let expected = walked_epochs(&batches);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r-0");
        let cfg = LogConfig { segment_bytes, index_interval_bytes, ..LogConfig::default() };
        let (p, c) = (path.clone(), cfg.clone());
        block_on(async move {
            let log = PartitionLog::open(&p, c).unwrap();
            log.append_replicated(concat(&batches)).await.unwrap();
            log.close().await.unwrap();
        })
        .unwrap();
        let _ = std::fs::remove_file(path.join(epochs::FILE_NAME));
        let log = PartitionLog::open(&path, cfg).unwrap();
        proptest::prop_assert_eq!(log.epoch_entries(), expected);
    }
}

#[test]
fn rebuilding_epochs_reads_few_headers_of_a_big_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    // 3000 one-record batches (78 bytes) in 64 KiB segments (4 of them), an index entry
    // every 4 KiB (about 53 batches); one epoch change.
    let batches: Vec<Vec<u8>> = (0..3000)
        .map(|i| leader_batch(i, 1, if i < 1234 { 3 } else { 4 }))
        .collect();
    let cfg = LogConfig {
        segment_bytes: 1 << 16,
        index_interval_bytes: 4096,
        ..LogConfig::default()
    };
    let (p, c) = (path.clone(), cfg.clone());
    block_on(async move {
        let log = PartitionLog::open(&p, c).unwrap();
        log.append_replicated(concat(&batches)).await.unwrap();
        assert_eq!(log.segment_count(), 4);
        log.close().await.unwrap();
    })
    .unwrap();
    std::fs::remove_file(path.join(epochs::FILE_NAME)).unwrap();
    epochs::REBUILD_HEADER_READS.with(|n| n.set(0));
    let log = PartitionLog::open(&path, cfg).unwrap();
    assert_eq!(log.epoch_entries(), vec![(3, 0), (4, 1234)]);
    let reads = epochs::REBUILD_HEADER_READS.with(|n| n.get());
    // Per segment: its first header and its last index interval; around the change a
    // bisection of the index and one interval.
    assert!(reads < 4 * 60 + 70, "{reads} header reads");
}

#[test]
fn truncation_of_a_compacted_log_ends_at_the_last_batch_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    // 30 batches of 2 records at 0, 3, 6, …: a gap of one offset after each; 10 batches per
    // segment, each segment based at its first batch (0, 30, 60).
    let batches: Vec<Vec<u8>> = (0..30).map(|i| leader_batch(3 * i, 2, 1)).collect();
    let b = batches.clone();
    block_on(async move {
        let log = PartitionLog::open(&p, config()).unwrap();
        assert_eq!(log.append_replicated(concat(&b)).await.unwrap(), 89);
        assert_eq!(segment_files(&p), vec![0, 30, 60]);
        // In the gap at the end of segment 0: segment 30 (starting past 29) goes whole.
        assert_eq!(log.truncate_to(29).await.unwrap(), 29);
        assert_eq!(segment_files(&p), vec![0]);
        // In a gap inside a segment: the batch after it goes.
        assert_eq!(log.truncate_to(26).await.unwrap(), 26);
        // Inside a batch after a gap: it goes, the end is the previous batch's.
        assert_eq!(log.truncate_to(25).await.unwrap(), 23);
        assert_eq!(log_bytes(&log).await, b[..8].concat());
        assert_eq!(
            log.append_replicated(concat(&[leader_batch(23, 1, 2)]))
                .await
                .unwrap(),
            24
        );
        log.sync_to(24).await.unwrap();
    })
    .unwrap();
    for recovery in [Recovery::Scan, Recovery::TrustCleanShutdown] {
        let (p, batches) = (path.clone(), batches.clone());
        block_on(async move {
            let log = PartitionLog::open_with(&p, config(), recovery).unwrap();
            assert_eq!(log.log_end_offset(), 24, "{recovery:?}");
            assert_eq!(
                log_bytes(&log).await,
                [batches[..8].concat(), leader_batch(23, 1, 2)].concat()
            );
            assert_eq!(log.epoch_entries(), vec![(1, 0), (2, 23)]);
        })
        .unwrap();
    }
}

#[test]
fn a_cleaning_running_across_a_truncation_brings_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r-0");
    let p = path.clone();
    block_on(async move {
        let log = Rc::new(PartitionLog::open(&p, config()).unwrap());
        log.append_replicated(concat(&sixty_batches()))
            .await
            .unwrap();
        log.sync_to(120).await.unwrap();
        // Keyless records: the cleaning drops them all, slowly (it yields every 64 bytes).
        let cleaner = {
            let log = log.clone();
            spawn(async move {
                log.clean(&crate::log::CleanConfig {
                    now_ms: 1 << 40,
                    delete_retention_ms: 0,
                    min_compaction_lag_ms: 0,
                    map_bytes_max: 1 << 20,
                    io_bytes_per_turn: 64,
                    duty_percent: 100,
                    segment_bytes_max: 3000,
                })
                .await
            })
        };
        // Once it writes its second group (segments 60 and 80), it has read the first
        // (0, 20, 40) whole; the truncation cuts 40 and deletes what the second reads.
        let second_group = p.join("00000000000000000060.log.cleaned");
        while !second_group.exists() {
            ringbroker_runtime::yield_now().await;
        }
        assert_eq!(log.truncate_to(51).await.unwrap(), 50);
        // It read what it cleaned before the cut (unlinked files stay readable) and gives up
        // its swap: the segments it would replace are no longer all closed ones.
        let cleaned = cleaner.await.unwrap();
        assert!(cleaned.is_ok(), "{cleaned:?}");
        assert_eq!(log.log_end_offset(), 50);
        assert!(segment_files(&p).iter().all(|&b| b <= 40));
        let all = log_bytes(&log).await;
        assert!(headers(&all).iter().all(|&(_, next, _)| next <= 50));
        log.sync_to(50).await.unwrap();
    })
    .unwrap();
    let p = path.clone();
    block_on(async move {
        let log = PartitionLog::open_with(&p, config(), Recovery::Scan).unwrap();
        assert_eq!(log.log_end_offset(), 50);
        let all = log_bytes(&log).await;
        assert!(headers(&all).iter().all(|&(_, next, _)| next <= 50));
    })
    .unwrap();
}
