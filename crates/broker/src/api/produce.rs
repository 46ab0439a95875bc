//! Produce: validate each partition's batch here, append it on the partition's owner shard,
//! answer once written (acks=1), once fdatasync'd (acks=-1), or not at all (acks=0).

use super::{decode_body, respond, Outcome};
use crate::connection::Conn;
use crate::errors;
use crate::limits::REQUEST_PARTITIONS_MAX;
use crate::metadata::TopicInfo;
use crate::producer_state::{Check, ProducerBatch, SequenceError, Settled};
use crate::shard::{self, Partition};
use crate::topic_config::TopicProduceSettings;
use bytes::Bytes;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use ringbroker_protocol::batch::{
    record_timestamp_range, stamp_log_append_time, validate_produced, BatchError, BatchHeader,
};
use ringbroker_protocol::request::Request;
use ringbroker_runtime::executor::spawn;
use ringbroker_storage::AppendError;
use std::rc::Rc;
use std::sync::Arc;

/// The first Produce version whose records are RecordBatch v2.
const PRODUCE_VERSION_MIN_HANDLED: i16 = 3;

struct PartitionResult {
    error: i16,
    base_offset: i64,
    log_start_offset: i64,
    message: Option<String>,
    /// The index in its batch of the record that made the whole batch refused (v8+
    /// `record_errors`).
    record_error: Option<i32>,
}

impl PartitionResult {
    fn error(code: i16, message: String) -> PartitionResult {
        PartitionResult {
            error: code,
            base_offset: -1,
            log_start_offset: -1,
            message: Some(message),
            record_error: None,
        }
    }
}

/// A batch for a compacted topic holding a record without a key is refused whole, as Kafka's
/// LogValidator refuses it: INVALID_RECORD (87, on every version since Kafka 2.4; v8+ also
/// carry the record's index in `record_errors` and the message), compressed batches included
/// (their records are walked through a bounded decompression). A batch whose records cannot
/// be walked is CORRUPT_MESSAGE.
fn keyless_refusal(records: &[u8], topic: &str, partition: i32) -> Option<PartitionResult> {
    use ringbroker_protocol::records::{first_keyless_record, DECOMPRESSED_BATCH_BYTES_MAX};
    match first_keyless_record(records, DECOMPRESSED_BATCH_BYTES_MAX) {
        Ok(None) => None,
        Ok(Some(index)) => Some(PartitionResult {
            record_error: Some(index),
            ..PartitionResult::error(
                errors::INVALID_RECORD,
                format!(
                    "Compacted topic cannot accept message without key in topic partition {topic}-{partition}."
                ),
            )
        }),
        Err(e) => Some(PartitionResult::error(
            errors::CORRUPT_MESSAGE,
            format!("the records of the batch cannot be read: {e}"),
        )),
    }
}

fn batch_error_code(e: &BatchError) -> i16 {
    match e {
        BatchError::TrailingBytes(_) => errors::INVALID_RECORD,
        _ => errors::CORRUPT_MESSAGE,
    }
}

fn sequence_error_code(e: SequenceError) -> i16 {
    match e {
        SequenceError::OutOfOrder => errors::OUT_OF_ORDER_SEQUENCE_NUMBER,
        SequenceError::StaleEpoch => errors::INVALID_PRODUCER_EPOCH,
    }
}

/// The base offset and the log start offset, or an error code and its message.
type AppendResult = Result<(i64, i64), (i16, String)>;

/// On the partition's owner: checks an idempotent batch and reserves its sequences, appends it,
/// and answers once it is written (and synced with `sync`). Nothing awaits between the
/// reservation and the append's first poll, which takes the batch's offsets: pipelined batches
/// of one producer are accepted at once and land in sequence order.
async fn append_on_owner(
    partition: Rc<Partition>,
    records: Bytes,
    header: BatchHeader,
    sync: bool,
    acks: Acks,
) -> AppendResult {
    let log = &partition.log;
    let count = header.records_count as u32;
    let storage_error = |e: AppendError| (errors::KAFKA_STORAGE_ERROR, e.to_string());
    // Only the leader takes writes; acks=all also needs min.insync.replicas in the ISR.
    crate::replication::check_produce(&partition, acks.acks)?;
    let batch = ProducerBatch::of(&header);
    if batch.is_some() {
        // Just after start-up, the state may still be read from its snapshot and the log.
        partition.producers.restored().await;
    }
    let reservation = match batch {
        None => None,
        Some(batch) => match partition.producers.check_and_reserve(batch) {
            Check::Reserved(reservation) => Some(reservation),
            Check::Duplicate(base) => return duplicate(&partition, base, count, sync, acks).await,
            Check::InFlight(original) => {
                return match original.outcome().await {
                    Settled::Written(base) => duplicate(&partition, base, count, sync, acks).await,
                    Settled::Failed => Err((
                        errors::KAFKA_STORAGE_ERROR,
                        "the first copy of this retried batch could not be written".into(),
                    )),
                };
            }
            Check::Rejected(e) => {
                return Err((
                    sequence_error_code(e),
                    format!(
                        "producer {} epoch {} sequence {}: {e}",
                        batch.producer_id, batch.epoch, batch.first_seq
                    ),
                ))
            }
        },
    };
    // A failed append drops the reservation, which releases its sequences for the retry.
    let base = log
        .append_batch(records, count)
        .await
        .map_err(storage_error)?;
    if let Some(reservation) = reservation {
        reservation.written(base);
    }
    crate::stats::produce_records(count);
    if sync {
        log.sync_to(base + count as i64)
            .await
            .map_err(storage_error)?;
    }
    replicated(&partition, base + count as i64, acks).await?;
    Ok((base, log.log_start_offset()))
}

/// The acks a Produce asked for and how long it may wait for them.
#[derive(Clone, Copy)]
struct Acks {
    acks: i16,
    timeout_ms: i32,
}

/// acks=all on a replicated leader: the batch ending at `end` is answered once the high
/// watermark passes it (a single node's partition returns at once).
async fn replicated(partition: &Partition, end: i64, acks: Acks) -> Result<(), (i16, String)> {
    if acks.acks != -1 || partition.replica.is_alone() {
        return Ok(());
    }
    let timeout = std::time::Duration::from_millis(acks.timeout_ms.max(0) as u64);
    crate::replication::await_acks(partition, end, timeout).await
}

/// Answers a batch already written at `base`, once it is synced with `sync` (its first copy
/// may still be waiting for its fdatasync) and, for acks=all, replicated.
async fn duplicate(
    partition: &Partition,
    base: i64,
    count: u32,
    sync: bool,
    acks: Acks,
) -> AppendResult {
    let log = &partition.log;
    if sync {
        log.sync_to(base + count as i64)
            .await
            .map_err(|e| (errors::KAFKA_STORAGE_ERROR, e.to_string()))?;
    }
    replicated(partition, base + count as i64, acks).await?;
    Ok((base, log.log_start_offset()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A CreateTime batch whose record timestamps lie outside the topic's
/// `message.timestamp.before.max.ms` / `after.max.ms` around `now_ms` is refused with
/// INVALID_TIMESTAMP, as Kafka does (records without a timestamp, -1, pass). Uncompressed
/// batches are checked record by record; compressed ones (not decompressed here) by their
/// baseTimestamp and maxTimestamp.
fn timestamp_refusal(
    records: &[u8],
    header: &BatchHeader,
    settings: TopicProduceSettings,
    now_ms: i64,
) -> Option<PartitionResult> {
    if settings.log_append_time
        || (settings.timestamp_before_ms_max == i64::MAX
            && settings.timestamp_after_ms_max == i64::MAX)
    {
        return None;
    }
    let lowest = now_ms.saturating_sub(settings.timestamp_before_ms_max);
    let highest = now_ms.saturating_add(settings.timestamp_after_ms_max);
    let (min, max) =
        record_timestamp_range(records).unwrap_or((header.base_timestamp, header.max_timestamp));
    let outside = |ts: i64| ts != -1 && (ts < lowest || ts > highest);
    let bad = [min, max].into_iter().find(|&ts| outside(ts))?;
    Some(PartitionResult::error(
        errors::INVALID_TIMESTAMP,
        format!(
            "Timestamp {bad} of a record is out of range. The timestamp should be within [{lowest}, {highest}]"
        ),
    ))
}

/// A copy of `records` stamped with the broker's append time (LogAppendTime topics).
fn stamped(records: &Bytes, now_ms: i64) -> Bytes {
    let mut copy = bytes::BytesMut::from(&records[..]);
    stamp_log_append_time(&mut copy, now_ms).expect("validated above");
    copy.freeze()
}

pub async fn handle(mut req: Request, conn: &Conn) -> Result<Outcome, Outcome> {
    let peer = &*conn.peer;
    if req.version < PRODUCE_VERSION_MIN_HANDLED {
        return Err(Outcome::Close(format!(
            "Produce v{} (message format v0/v1) is not supported; use v3 or newer",
            req.version
        )));
    }
    let body: ProduceRequest = decode_body(&mut req)?;
    let asked: usize = body.topic_data.iter().map(|t| t.partition_data.len()).sum();
    super::refuse_over("Produce", "partitions", asked, REQUEST_PARTITIONS_MAX)?;
    let shard = shard::current();
    let broker_message_bytes_max = shard.shared.config.message_bytes_max;
    let acks = body.acks;
    let wanted_acks = Acks {
        acks,
        timeout_ms: body.timeout_ms,
    };
    let sync = shard.shared.config.flush.sync_before_ack(acks);
    if !matches!(acks, -1..=1) {
        return Err(Outcome::Close(format!("invalid acks value {acks}")));
    }
    if body.transactional_id.is_some() {
        return Err(Outcome::Close(
            "transactional produce is not supported".into(),
        ));
    }
    let now_ms = now_ms();
    // Start every partition's append, then collect the results in request order.
    let mut topics = Vec::with_capacity(body.topic_data.len());
    for topic_data in body.topic_data {
        let topic: Option<Arc<TopicInfo>> = shard.topic(&topic_data.name.0);
        // The topic's configs (its own, else the broker's) as they are now.
        let settings = topic.as_ref().map(|t| shard.produce_settings(t));
        let message_bytes_max = settings.map_or(broker_message_bytes_max, |s| s.message_bytes_max);
        // Kafka checks WRITE before the topic's existence (no hint that it exists).
        let writable = crate::security::authorize(
            conn,
            crate::acl::WRITE,
            crate::security::resource::TOPIC,
            &topic_data.name.0,
        );
        let mut partitions = Vec::with_capacity(topic_data.partition_data.len());
        for pd in topic_data.partition_data {
            let index = pd.index;
            let records = pd.records.unwrap_or_default();
            let early = match &topic {
                _ if !writable => Some(PartitionResult::error(
                    errors::TOPIC_AUTHORIZATION_FAILED,
                    "Topic authorization failed.".into(),
                )),
                None => Some(PartitionResult::error(
                    errors::UNKNOWN_TOPIC_OR_PARTITION,
                    "unknown topic".into(),
                )),
                Some(t) if t.owner(index).is_none() => Some(PartitionResult::error(
                    errors::UNKNOWN_TOPIC_OR_PARTITION,
                    "unknown partition".into(),
                )),
                // Only the group coordinator writes the offsets topic (as in Kafka): a client's
                // record under a commit's key would be kept by compaction in its place.
                Some(t) if t.name == crate::groups::OFFSETS_TOPIC => {
                    crate::warn_limited!(%peer, "refused a Produce to the internal topic __consumer_offsets");
                    Some(PartitionResult::error(
                        errors::INVALID_TOPIC_EXCEPTION,
                        format!("Cannot append to internal topic {}", t.name),
                    ))
                }
                _ if records.len() > message_bytes_max => {
                    crate::warn_limited!(%peer, topic = %topic_data.name.0, partition = index, bytes = records.len(), message_bytes_max, "rejected record batch: MESSAGE_TOO_LARGE");
                    Some(PartitionResult::error(
                        errors::MESSAGE_TOO_LARGE,
                        format!(
                            "batch of {} bytes exceeds max.message.bytes {message_bytes_max}",
                            records.len()
                        ),
                    ))
                }
                _ => match validate_produced(&records) {
                    Err(e) => {
                        crate::warn_limited!(%peer, topic = %topic_data.name.0, partition = index, error = %e, "rejected record batch");
                        Some(PartitionResult::error(batch_error_code(&e), e.to_string()))
                    }
                    Ok(h) if h.is_transactional() || h.is_control() => {
                        Some(PartitionResult::error(
                            errors::INVALID_RECORD,
                            "transactional and control batches are not supported".into(),
                        ))
                    }
                    Ok(h) => settings.and_then(|s| {
                        timestamp_refusal(&records, &h, s, now_ms).or_else(|| {
                            s.keys_required
                                .then(|| keyless_refusal(&records, &topic_data.name.0, index))
                                .flatten()
                        })
                    }),
                },
            };
            let pending = match early {
                Some(result) => Err(result),
                None => {
                    let topic = topic.clone().expect("checked above");
                    if let Some(owner) = topic.owner(index) {
                        conn.touched(owner);
                    }
                    let records = match settings {
                        Some(s) if s.log_append_time => stamped(&records, now_ms),
                        _ => records,
                    };
                    let header = BatchHeader::parse(&records).expect("validated above");
                    Ok(spawn(async move {
                        shard::on_owned_partition(&topic, index, move |partition| {
                            append_on_owner(partition, records, header, sync, wanted_acks)
                        })
                        .await
                    }))
                }
            };
            let log_append_time_ms = match settings {
                Some(s) if s.log_append_time => now_ms,
                _ => -1,
            };
            partitions.push((index, pending, log_append_time_ms));
        }
        topics.push((topic_data.name, partitions));
    }
    // Waiting for an fdatasync: the connection reads the requests behind this one meanwhile,
    // so Produce requests that arrive during the sync are appended and join the next one.
    // So is waiting for the followers (acks=all in a cluster).
    let replicating = acks == -1 && shard.shared.cluster.is_some();
    let _parked = (sync || replicating).then(|| conn.park());
    let mut responses = Vec::with_capacity(topics.len());
    for (name, partitions) in topics {
        let mut partition_responses = Vec::with_capacity(partitions.len());
        for (index, pending, log_append_time_ms) in partitions {
            let result = match pending {
                Err(r) => r,
                Ok(handle) => match handle.await {
                    Ok(Some(Ok((base_offset, log_start_offset)))) => PartitionResult {
                        error: errors::NONE,
                        base_offset,
                        log_start_offset,
                        message: None,
                        record_error: None,
                    },
                    Ok(Some(Err((code, message)))) => PartitionResult::error(code, message),
                    Ok(None) | Err(_) => PartitionResult::error(
                        errors::UNKNOWN_TOPIC_OR_PARTITION,
                        "partition went away".into(),
                    ),
                },
            };
            let mut r = PartitionProduceResponse::default()
                .with_index(index)
                .with_error_code(result.error)
                .with_base_offset(result.base_offset);
            if result.error == errors::NONE {
                r = r.with_log_append_time_ms(log_append_time_ms);
            }
            if req.version >= 5 {
                r = r.with_log_start_offset(result.log_start_offset);
            }
            if req.version >= 8 {
                if let Some(index) = result.record_error {
                    r = r.with_record_errors(vec![BatchIndexAndErrorMessage::default()
                        .with_batch_index(index)
                        .with_batch_index_error_message(
                            result
                                .message
                                .clone()
                                .map(kafka_protocol::protocol::StrBytes::from_string),
                        )]);
                }
                r = r.with_error_message(
                    result
                        .message
                        .map(kafka_protocol::protocol::StrBytes::from_string),
                );
            }
            partition_responses.push(r);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partition_responses),
        );
    }
    let response = ProduceResponse::default().with_responses(responses);
    if acks == 0 {
        crate::stats::response_errors(req.api as i16, &response);
        return Ok(Outcome::Silent);
    }
    Ok(respond(&req, &response))
}
