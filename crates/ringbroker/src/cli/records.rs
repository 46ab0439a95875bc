//! `ringbroker produce` (stdin lines, one record each, offsets printed; lines already
//! waiting go out together) and `ringbroker
//! consume` (values printed), for quick checks; the load generator is `ringbroker bench`.
//!
//! `consume` stops, by default, once it has read every partition up to the high watermark it
//! saw at the start (or after `-n COUNT` records); `--follow` keeps waiting for new records.
//! Batches compressed by other producers are decompressed with the broker's own codecs
//! (`ringbroker_protocol::compression`), bounded like the broker's lookups.

use super::admin::{check, topic_name, versions, Admin, ClusterInfo, KafkaError};
use super::output::{stdout_failed, Format};
use super::topic::{offsets, EARLIEST, LATEST};
use super::{Common, Context};
use crate::client::{fetch_request, whole_batches};
use anyhow::{anyhow, bail, Context as _, Result};
use bytes::{Bytes, BytesMut};
use clap::Args;
use kafka_protocol::messages::{
    produce_request::{PartitionProduceData, TopicProduceData},
    ApiKey, FetchResponse, ProduceRequest, ProduceResponse,
};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use ringbroker_protocol::compression::{self, Codec};
use ringbroker_protocol::records::DECOMPRESSED_BATCH_BYTES_MAX;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

/// Bytes one stdin line may hold (the broker's default `max.message.bytes` is about 1 MiB).
const LINE_BYTES_MAX: usize = 16 << 20;
/// Lines already waiting on stdin go out together, up to this many records or bytes (below
/// the default `max.message.bytes`) per request.
const PRODUCE_BATCH_RECORDS_MAX: usize = 1000;
const PRODUCE_BATCH_BYTES_MAX: usize = 512 << 10;
/// Fetch sizes: per partition and per request.
const FETCH_PARTITION_BYTES_MAX: i32 = 1 << 20;
const FETCH_BYTES_MAX: i32 = 16 << 20;
/// How long a Fetch waits for records when there are none yet.
const FETCH_WAIT_MS: i32 = 500;
/// Produce and Fetch time-outs given to the broker.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: Common,
    /// The topic to write to (it must exist).
    pub topic: String,
    /// Partition to write to. [default: by key (Kafka's murmur2 partitioner) when -k is given,
    /// else round robin]
    #[arg(short = 'p', long)]
    pub partition: Option<i32>,
    /// Key of every record.
    #[arg(short = 'k', long)]
    pub key: Option<String>,
    /// 0, 1 or -1 (all in-sync replicas).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub acks: i16,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// The topic to read.
    pub topic: String,
    /// Partitions to read (repeatable). [default: all]
    #[arg(short = 'p', long = "partition")]
    pub partitions: Vec<i32>,
    /// Where to start: `start` (log start offset), `end` (high watermark), an offset N, or
    /// -N (N records before the high watermark).
    #[arg(short = 'o', long, default_value = "start", allow_hyphen_values = true)]
    pub offset: String,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    pub count: Option<u64>,
    /// Keep waiting for new records after reaching the end (until -n records or Ctrl-C).
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// Kafka's `Utils.murmur2`, so keyed records land where Java clients put them.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)) as i32
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One uncompressed v2 batch of `values`, each with `key`.
fn record_batch(key: Option<&[u8]>, values: &[&[u8]]) -> Result<Bytes> {
    let timestamp = now_ms();
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // No producer id: base sequence -1. The encoder keeps records in one batch while
            // offset - sequence stays the same, so the sequence follows the offset.
            sequence: i as i32 - 1,
            timestamp,
            key: key.map(Bytes::copy_from_slice),
            value: Some(Bytes::copy_from_slice(value)),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| anyhow!("encoding a record batch: {e}"))?;
    Ok(buf.freeze())
}

/// The leader address of each partition of `topic`.
fn leaders(cluster: &ClusterInfo, topic: &str) -> Result<BTreeMap<i32, String>> {
    let info = match cluster.topic(topic) {
        Ok(info) => info,
        Err(e) => match e.downcast::<KafkaError>() {
            Ok(mut k) if k.code == 3 => {
                k.message.push_str(
                    " does not exist (create it with `ringbroker topic create`; produce and consume never create topics)",
                );
                return Err(k.into());
            }
            Ok(k) => return Err(k.into()),
            Err(e) => return Err(e),
        },
    };
    let mut out = BTreeMap::new();
    for p in &info.partitions {
        check(
            p.error_code,
            || format!("partition {topic}-{}", p.partition),
            None,
        )?;
        out.insert(p.partition, cluster.broker_addr(p.leader)?);
    }
    if out.is_empty() {
        bail!("topic {topic:?} has no partitions yet");
    }
    Ok(out)
}

pub async fn produce(mut c: Context, args: ProduceArgs) -> Result<()> {
    let cluster = c
        .admin
        .metadata(Some(std::slice::from_ref(&args.topic)))
        .await?;
    let leaders = leaders(&cluster, &args.topic)?;
    let partitions: Vec<i32> = leaders.keys().copied().collect();
    if let Some(p) = args.partition {
        if !leaders.contains_key(&p) {
            return Err(KafkaError::new(3, format!("partition {}-{p}", args.topic), None).into());
        }
    }
    let key = args.key.as_deref().map(str::as_bytes);
    // Its own buffer, so the lines already read can be told from those still to come.
    let mut input = std::io::BufReader::with_capacity(256 << 10, std::io::stdin().lock());
    let mut round_robin = 0usize;
    let mut produced = 0u64;
    loop {
        // Blocks for the first line; takes the next ones only while they are already there,
        // so a person typing sees each offset at once and a pipe goes in batches.
        let mut lines = Vec::new();
        let mut bytes = 0;
        while lines.is_empty()
            || (lines.len() < PRODUCE_BATCH_RECORDS_MAX
                && bytes < PRODUCE_BATCH_BYTES_MAX
                && input.buffer().contains(&b'\n'))
        {
            let Some(line) = read_line(&mut input)? else {
                break;
            };
            bytes += line.len();
            lines.push(line);
        }
        if lines.is_empty() {
            break;
        }
        let targets: Vec<i32> = lines
            .iter()
            .map(|_| match (args.partition, key) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_for_key(k, partitions.len()),
                (None, None) => {
                    round_robin += 1;
                    partitions[(round_robin - 1) % partitions.len()]
                }
            })
            .collect();
        let offsets = produce_lines(&mut c.admin, &leaders, &args, &targets, &lines).await?;
        produced += lines.len() as u64;
        let mut text = String::new();
        for (partition, offset) in targets.iter().zip(offsets) {
            match c.format {
                Format::Json => {
                    let line = json!({
                        "topic": args.topic, "partition": partition, "offset": offset,
                    });
                    text.push_str(&format!("{line}\n"));
                }
                Format::Text => {
                    let offset =
                        offset.map_or_else(|| "unknown (acks=0)".to_string(), |o| o.to_string());
                    text.push_str(&format!(
                        "Produced to partition {partition} at offset {offset}\n"
                    ));
                }
            }
        }
        super::output::emit(&text);
    }
    if produced == 0 {
        eprintln!("ringbroker: stdin was empty; nothing produced");
    }
    Ok(())
}

/// The next stdin line without its newline; `None` at the end.
fn read_line(input: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = input
        .take(LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', &mut line)
        .context("reading stdin")?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > LINE_BYTES_MAX {
        bail!("a stdin line is longer than {LINE_BYTES_MAX} bytes");
    }
    Ok(Some(line))
}

/// Sends `lines` (line i to partition `targets[i]`), one batch per partition and one
/// request per leader; the offset of each line (`None` with acks=0).
async fn produce_lines(
    admin: &mut Admin,
    leaders: &BTreeMap<i32, String>,
    args: &ProduceArgs,
    targets: &[i32],
    lines: &[Vec<u8>],
) -> Result<Vec<Option<i64>>> {
    let key = args.key.as_deref().map(str::as_bytes);
    // partition → the indexes of its lines, in order.
    let mut by_partition: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, &p) in targets.iter().enumerate() {
        by_partition.entry(p).or_default().push(i);
    }
    let mut by_leader: BTreeMap<&str, Vec<(i32, Bytes)>> = BTreeMap::new();
    for (&p, indexes) in &by_partition {
        let values: Vec<&[u8]> = indexes.iter().map(|&i| lines[i].as_slice()).collect();
        by_leader
            .entry(leaders[&p].as_str())
            .or_default()
            .push((p, record_batch(key, &values)?));
    }
    let mut offsets = vec![None; lines.len()];
    for (leader, batches) in by_leader {
        let request = |_| {
            ProduceRequest::default()
                .with_acks(args.acks)
                .with_timeout_ms(PRODUCE_TIMEOUT_MS)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic_name(&args.topic))
                    .with_partition_data(
                        batches
                            .iter()
                            .map(|(p, batch)| {
                                PartitionProduceData::default()
                                    .with_index(*p)
                                    .with_records(Some(batch.clone()))
                            })
                            .collect(),
                    )])
        };
        if args.acks == 0 {
            // No answer comes: send without waiting for one.
            let client = admin.at(leader).await?;
            let version = client.version(ApiKey::Produce, versions::PRODUCE).await?;
            client
                .send_only(ApiKey::Produce, version, &request(version))
                .await?;
            continue;
        }
        let (_, r): (_, ProduceResponse) = admin
            .call_at(leader, ApiKey::Produce, versions::PRODUCE, request)
            .await?;
        for (p, _) in &batches {
            let answer = r
                .responses
                .iter()
                .flat_map(|t| t.partition_responses.iter())
                .find(|x| x.index == *p)
                .with_context(|| format!("Produce answer does not mention partition {p}"))?;
            check(
                answer.error_code,
                || format!("producing to {}-{p}", args.topic),
                answer.error_message.as_ref(),
            )?;
            for (n, &i) in by_partition[p].iter().enumerate() {
                offsets[i] = Some(answer.base_offset + n as i64);
            }
        }
    }
    Ok(offsets)
}

/// Where one partition's reading is.
struct Cursor {
    leader: String,
    position: i64,
    /// The high watermark at the start: reading stops there unless following.
    end: i64,
}

pub async fn consume(mut c: Context, args: ConsumeArgs) -> Result<()> {
    let mut cursors = start_cursors(&mut c.admin, &args).await?;
    let mut out = Printer {
        topic: args.topic.clone(),
        format: c.format,
        left: args.count,
    };
    loop {
        if !args.follow {
            cursors.retain(|_, cur| cur.position < cur.end);
        }
        if cursors.is_empty() || out.left == Some(0) {
            break;
        }
        let mut by_leader: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
        for (&p, cur) in &cursors {
            by_leader
                .entry(cur.leader.clone())
                .or_default()
                .push((p, cur.position));
        }
        for (leader, wanted) in by_leader {
            let name = topic_name(&args.topic);
            let (_, r): (_, FetchResponse) = c
                .admin
                .call_at(&leader, ApiKey::Fetch, versions::FETCH, |_| {
                    fetch_request(
                        &name,
                        &wanted,
                        FETCH_WAIT_MS,
                        FETCH_PARTITION_BYTES_MAX,
                        FETCH_BYTES_MAX,
                    )
                })
                .await?;
            check(r.error_code, || format!("Fetch from {leader}"), None)?;
            for part in r.responses.into_iter().flat_map(|t| t.partitions) {
                let p = part.partition_index;
                let Some(cur) = cursors.get_mut(&p) else {
                    continue;
                };
                if part.error_code != 0 {
                    return Err(KafkaError::new(
                        part.error_code,
                        format!(
                            "reading {}-{p} at offset {} (log start offset {}, high watermark {})",
                            args.topic, cur.position, part.log_start_offset, part.high_watermark
                        ),
                        None,
                    )
                    .into());
                }
                out.take(p, cur, &part.records.unwrap_or_default())?;
            }
        }
    }
    Ok(())
}

/// Each partition's leader, start position and the end it had (ListOffsets).
async fn start_cursors(admin: &mut Admin, args: &ConsumeArgs) -> Result<BTreeMap<i32, Cursor>> {
    let topic = &args.topic;
    let cluster = admin.metadata(Some(std::slice::from_ref(topic))).await?;
    let leaders = leaders(&cluster, topic)?;
    let partitions: Vec<i32> = if args.partitions.is_empty() {
        leaders.keys().copied().collect()
    } else {
        for p in &args.partitions {
            if !leaders.contains_key(p) {
                return Err(KafkaError::new(3, format!("partition {topic}-{p}"), None).into());
            }
        }
        args.partitions.clone()
    };
    let start = offsets(admin, &cluster, topic, &partitions, EARLIEST).await?;
    let end = offsets(admin, &cluster, topic, &partitions, LATEST).await?;
    let mut cursors = BTreeMap::new();
    for &p in &partitions {
        let first = start[&p].clone().map_err(anyhow::Error::new)?;
        let last = end[&p].clone().map_err(anyhow::Error::new)?;
        let position = match args.offset.as_str() {
            "start" | "beginning" | "earliest" => first,
            "end" | "latest" => last,
            n => {
                let n: i64 = n
                    .parse()
                    .with_context(|| format!("-o {n:?}: expected start, end, an offset or -N"))?;
                if n < 0 {
                    (last + n).max(first)
                } else {
                    n
                }
            }
        };
        cursors.insert(
            p,
            Cursor {
                leader: leaders[&p].clone(),
                position,
                end: last,
            },
        );
    }
    Ok(cursors)
}

/// Prints records in order, `left` of them at most.
struct Printer {
    topic: String,
    format: Format,
    left: Option<u64>,
}

impl Printer {
    /// Prints the records of one partition's Fetch answer from the cursor on, and moves it.
    fn take(&mut self, partition: i32, cur: &mut Cursor, records: &[u8]) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        for batch in whole_batches(records)? {
            let set = decode_batch(batch).map_err(|e| {
                anyhow!(
                    "decoding a record batch of {}-{partition}: {e:#}",
                    self.topic
                )
            })?;
            for record in set.records {
                if record.control || record.offset < cur.position {
                    continue;
                }
                if self.left == Some(0) {
                    break;
                }
                print_record(&mut stdout, self.format, &self.topic, partition, &record);
                self.left = self.left.map(|n| n - 1);
                cur.position = record.offset + 1;
            }
            // Past the whole batch (control batches, compacted gaps), unless the count
            // stopped in its middle.
            if self.left != Some(0) {
                cur.position = cur.position.max(batch_next_offset(batch));
            }
        }
        // Records show as they come (a follower's reader sees each answer at once).
        if let Err(e) = stdout.flush() {
            stdout_failed(e);
        }
        Ok(())
    }
}

/// The records of one whole batch, decompressed (bounded) when compressed.
fn decode_batch(batch: &[u8]) -> Result<kafka_protocol::records::RecordSet> {
    let mut bytes = Bytes::copy_from_slice(batch);
    let decompress = |data: &mut Bytes, compression: Compression| -> Result<Bytes> {
        let codec = match compression {
            Compression::None => Codec::None,
            Compression::Gzip => Codec::Gzip,
            Compression::Snappy => Codec::Snappy,
            Compression::Lz4 => Codec::Lz4,
            Compression::Zstd => Codec::Zstd,
        };
        let out = compression::decompress(codec, data, DECOMPRESSED_BATCH_BYTES_MAX as usize)?;
        Ok(Bytes::from(out))
    };
    RecordBatchDecoder::decode_with_custom_compression(&mut bytes, Some(decompress))
}

/// The offset after a whole batch (base offset + last offset delta + 1).
fn batch_next_offset(batch: &[u8]) -> i64 {
    let base = batch
        .get(0..8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, i64::from_be_bytes);
    let delta = batch
        .get(23..27)
        .and_then(|s| s.try_into().ok())
        .map_or(0, i32::from_be_bytes);
    base + delta as i64 + 1
}

fn print_record(
    out: &mut impl Write,
    format: Format,
    topic: &str,
    partition: i32,
    record: &Record,
) {
    match format {
        Format::Text => {
            if let Err(e) = out
                .write_all(record.value.as_deref().unwrap_or_default())
                .and_then(|_| out.write_all(b"\n"))
            {
                stdout_failed(e);
            }
        }
        Format::Json => {
            let text =
                |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
            if let Err(e) = writeln!(
                out,
                "{}",
                json!({
                    "topic": topic,
                    "partition": partition,
                    "offset": record.offset,
                    "timestamp": record.timestamp,
                    "key": text(&record.key),
                    "value": text(&record.value),
                })
            ) {
                stdout_failed(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn record_batches_are_valid() {
        let b = record_batch(Some(b"k"), &[b"hello", b"world"]).unwrap();
        let header = ringbroker_protocol::batch::validate_produced(&b).expect("one valid batch");
        assert_eq!(header.records_count, 2);
        assert_eq!(header.base_sequence, -1);
        assert_eq!(header.producer_id, -1);
        assert_eq!(batch_next_offset(&b), 2);
        let set = RecordBatchDecoder::decode(&mut b.clone()).unwrap();
        assert_eq!(set.records[0].value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(set.records[1].offset, 1);
        assert_eq!(set.records[1].key.as_deref(), Some(&b"k"[..]));
    }
}
