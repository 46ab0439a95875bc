//! A connection keeps reading while its requests are in flight (issue #13): a request read
//! behind a slow one starts at once, answers still leave strictly in request order, a client
//! that pipelines without reading its answers stalls only itself, and a bad frame or a closing
//! request still ends the connection after the answers before it.

mod common;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A raw protocol connection whose requests are encoded ahead and sent in one write.
struct Raw {
    stream: TcpStream,
    correlation_id: i32,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            stream,
            correlation_id: 0,
        }
    }

    /// Appends one request frame to `out`; its correlation id.
    fn frame<Req: Encodable>(
        &mut self,
        out: &mut Vec<u8>,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> i32 {
        self.correlation_id += 1;
        let mut body = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("inflight")))
            .encode(&mut body, api.request_header_version(version))
            .unwrap();
        req.encode(&mut body, version).unwrap();
        out.put_i32(body.len() as i32);
        out.extend_from_slice(&body);
        self.correlation_id
    }

    /// Reads the next response; it must answer `correlation_id`.
    fn read<Resp: Decodable>(&mut self, api: ApiKey, version: i16, correlation_id: i32) -> Resp {
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .unwrap_or_else(|e| panic!("{api:?}: no response ({e})"));
        let mut buf = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut buf).unwrap();
        let mut buf = Bytes::from(buf);
        let header =
            ResponseHeader::decode(&mut buf, api.response_header_version(version)).unwrap();
        assert_eq!(
            header.correlation_id, correlation_id,
            "answers out of request order: expected the {api:?} answer"
        );
        let resp = Resp::decode(&mut buf, version).unwrap();
        assert!(!buf.has_remaining());
        resp
    }

    /// Whether any answer byte is readable within `wait`.
    fn readable_within(&self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        let got = match self.stream.peek(&mut byte) {
            Ok(n) => n > 0,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => panic!("peek: {e}"),
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        got
    }

    /// Whether the broker closed the connection (EOF) within the read timeout.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
            || matches!(self.stream.read(&mut byte), Err(e) if e.kind() == ErrorKind::ConnectionReset)
    }
}

fn create(addr: &str, topic: &str) {
    let mut c = Client::connect(addr);
    let t = create_topics_request::CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(1)
        .with_replication_factor(1);
    let r: CreateTopicsResponse = c.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![t]),
    );
    assert_eq!(r.topics[0].error_code, 0, "create {topic}");
}

/// The latest offset of partition 0 of `topic`, asked on a connection of its own.
fn end_offset(addr: &str, topic: &str) -> i64 {
    let mut c = Client::connect(addr);
    let p = list_offsets_request::ListOffsetsPartition::default()
        .with_partition_index(0)
        .with_timestamp(-1);
    let t = list_offsets_request::ListOffsetsTopic::default()
        .with_name(name(topic))
        .with_partitions(vec![p]);
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![t]);
    let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 5, &req);
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

fn produce_request(topic: &str, acks: i16, value: &[u8]) -> ProduceRequest {
    let batch = ringbroker_protocol::batch::build_batch(0, 1_700_000_000_000, &[value]);
    let pd = produce_request::PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(Bytes::from(batch)));
    let td = produce_request::TopicProduceData::default()
        .with_name(name(topic))
        .with_partition_data(vec![pd]);
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![td])
}

fn fetch_request(topic: &str, max_wait_ms: i32, max_bytes: i32) -> FetchRequest {
    use kafka_protocol::messages::fetch_request::*;
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(max_bytes)])])
}

#[test]
fn a_produce_behind_a_long_poll_fetch_is_appended_at_once_and_answers_keep_request_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "quiet");
    create(&broker.addr, "busy");
    let mut raw = Raw::connect(&broker.addr);
    // A long poll on an empty partition, read by the broker on its own...
    let mut first = Vec::new();
    let slow = raw.frame(
        &mut first,
        ApiKey::Fetch,
        12,
        &fetch_request("quiet", 3000, 1 << 20),
    );
    let sent = Instant::now();
    raw.stream.write_all(&first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // ...then a shorter one, two fast requests and a Produce, which arrive while it waits.
    let mut out = Vec::new();
    let short = raw.frame(
        &mut out,
        ApiKey::Fetch,
        12,
        &fetch_request("quiet", 200, 1 << 20),
    );
    let versions = raw.frame(
        &mut out,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    let metadata = raw.frame(
        &mut out,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    let produce = raw.frame(
        &mut out,
        ApiKey::Produce,
        9,
        &produce_request("busy", 1, b"behind the long poll"),
    );
    raw.stream.write_all(&out).unwrap();
    // While the long poll waits, the Produce read behind it is already appended...
    let appended_by = Instant::now() + Duration::from_millis(1500);
    let mut end = end_offset(&broker.addr, "busy");
    while end == 0 && Instant::now() < appended_by {
        std::thread::sleep(Duration::from_millis(50));
        end = end_offset(&broker.addr, "busy");
    }
    assert_eq!(
        end, 1,
        "the Produce behind a long-poll Fetch was not appended while the Fetch waited"
    );
    // ...but no answer leaves before the long poll's: the short Fetch and the fast requests
    // are done and wait for the head.
    assert!(
        !raw.readable_within(Duration::from_millis(500)),
        "an answer left before the long-poll Fetch at its head"
    );
    let r: FetchResponse = raw.read(ApiKey::Fetch, 12, slow);
    let waited = sent.elapsed();
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    assert!(
        waited >= Duration::from_millis(2500),
        "the long poll answered after {waited:?}"
    );
    let _: FetchResponse = raw.read(ApiKey::Fetch, 12, short);
    let v: ApiVersionsResponse = raw.read(ApiKey::ApiVersions, 3, versions);
    assert_eq!(v.error_code, 0);
    let m: MetadataResponse = raw.read(ApiKey::Metadata, 12, metadata);
    assert!(m.topics.iter().any(|t| t.name == Some(name("busy"))));
    let p: ProduceResponse = raw.read(ApiKey::Produce, 9, produce);
    let p = &p.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    // The connection goes on serving.
    let mut out = Vec::new();
    let again = raw.frame(
        &mut out,
        ApiKey::Produce,
        9,
        &produce_request("busy", -1, b"after"),
    );
    raw.stream.write_all(&out).unwrap();
    let p: ProduceResponse = raw.read(ApiKey::Produce, 9, again);
    let p = &p.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 1));
}

#[test]
fn many_pipelined_produces_with_acks_all_are_answered_in_order_and_stored_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "ordered");
    let mut raw = Raw::connect(&broker.addr);
    // More than the request bound, mixed with fast requests, in a few writes.
    let mut ids = Vec::new();
    for round in 0..4 {
        let mut out = Vec::new();
        for i in 0..50 {
            let n = round * 50 + i;
            if n % 7 == 3 {
                let id = raw.frame(
                    &mut out,
                    ApiKey::ApiVersions,
                    3,
                    &ApiVersionsRequest::default(),
                );
                ids.push((id, None));
            } else {
                let value = format!("record {n}");
                let id = raw.frame(
                    &mut out,
                    ApiKey::Produce,
                    9,
                    &produce_request("ordered", -1, value.as_bytes()),
                );
                ids.push((id, Some(value)));
            }
        }
        raw.stream.write_all(&out).unwrap();
    }
    let mut expected = 0i64;
    let mut values = Vec::new();
    for (id, value) in ids {
        match value {
            None => {
                let _: ApiVersionsResponse = raw.read(ApiKey::ApiVersions, 3, id);
            }
            Some(value) => {
                let p: ProduceResponse = raw.read(ApiKey::Produce, 9, id);
                let p = &p.responses[0].partition_responses[0];
                assert_eq!((p.error_code, p.base_offset), (0, expected), "{value}");
                expected += 1;
                values.push(value);
            }
        }
    }
    assert_eq!(end_offset(&broker.addr, "ordered"), expected);
    // Each record at the offset its answer named (kcat: partition, offset, key, value).
    let mut want: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(offset, v)| format!("0\t{offset}\t\t{v}"))
        .collect();
    want.sort();
    assert_eq!(kcat_consume_all(&broker.addr, "ordered"), want);
}

#[test]
fn a_client_that_pipelines_without_reading_stops_the_reads_of_its_own_connection_only() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "wide");
    create(&broker.addr, "last");
    let value = "v".repeat(10_000);
    let input: String = (0..300).map(|i| format!("k{i}\t{value}\n")).collect();
    kcat_produce(&broker.addr, "wide", &input);
    // 150 Fetches of ~3 MB each, then a Produce, pipelined; no answer is read for now.
    let fetches = 150;
    let mut raw = Raw::connect(&broker.addr);
    let mut out = Vec::new();
    let ids: Vec<i32> = (0..fetches)
        .map(|_| {
            raw.frame(
                &mut out,
                ApiKey::Fetch,
                12,
                &fetch_request("wide", 0, 4 << 20),
            )
        })
        .collect();
    let produce = raw.frame(
        &mut out,
        ApiKey::Produce,
        9,
        &produce_request("last", 1, b"after the fetches"),
    );
    let rss_before = vm_kib(broker.pid, "VmRSS:");
    raw.stream.write_all(&out).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let rss_during = vm_kib(broker.pid, "VmRSS:");
    // The broker stopped reading at its bound: the Produce at the end was not read.
    assert_eq!(
        end_offset(&broker.addr, "last"),
        0,
        "the broker read past its in-flight bound"
    );
    let grown = rss_during.saturating_sub(rss_before);
    eprintln!("stalled pipelining client: broker RSS {rss_before} KiB -> {rss_during} KiB");
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // Others are served meanwhile.
    assert_eq!(end_offset(&broker.addr, "wide"), 300);
    // Reading the answers lets it go on, in order, up to the Produce.
    for id in ids {
        let r: FetchResponse = raw.read(ApiKey::Fetch, 12, id);
        assert_eq!(r.responses[0].partitions[0].error_code, 0);
    }
    let p: ProduceResponse = raw.read(ApiKey::Produce, 9, produce);
    let p = &p.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    assert_eq!(end_offset(&broker.addr, "last"), 1);
}

#[test]
fn a_bad_frame_or_a_closing_request_after_pipelined_requests_closes_after_their_answers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "quiet");
    create(&broker.addr, "kept");
    // A slow request, a Produce, a fast one, then a frame with a negative size and a request
    // after it that must not be handled.
    let mut raw = Raw::connect(&broker.addr);
    let mut out = Vec::new();
    let slow = raw.frame(
        &mut out,
        ApiKey::Fetch,
        12,
        &fetch_request("quiet", 1500, 1 << 20),
    );
    raw.stream.write_all(&out).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut out = Vec::new();
    let produce = raw.frame(
        &mut out,
        ApiKey::Produce,
        9,
        &produce_request("kept", 1, b"before the bad frame"),
    );
    let versions = raw.frame(
        &mut out,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    out.put_i32(-5);
    let mut after = Vec::new();
    raw.frame(
        &mut after,
        ApiKey::Produce,
        9,
        &produce_request("kept", 1, b"after the bad frame"),
    );
    out.extend_from_slice(&after);
    raw.stream.write_all(&out).unwrap();
    // The Produce read behind the waiting Fetch is appended before the Fetch is answered.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        end_offset(&broker.addr, "kept"),
        1,
        "the Produce behind a long-poll Fetch was not appended while the Fetch waited"
    );
    let _: FetchResponse = raw.read(ApiKey::Fetch, 12, slow);
    let p: ProduceResponse = raw.read(ApiKey::Produce, 9, produce);
    assert_eq!(p.responses[0].partition_responses[0].error_code, 0);
    let _: ApiVersionsResponse = raw.read(ApiKey::ApiVersions, 3, versions);
    assert!(raw.closed(), "the connection stayed open after a bad frame");
    assert_eq!(end_offset(&broker.addr, "kept"), 1);

    // A request that closes the connection (a Produce with acks=2) behind a slow
    // one: the answers before it, then the close; nothing after it is answered.
    let mut raw = Raw::connect(&broker.addr);
    let mut out = Vec::new();
    let slow = raw.frame(
        &mut out,
        ApiKey::Fetch,
        12,
        &fetch_request("quiet", 500, 1 << 20),
    );
    let versions = raw.frame(
        &mut out,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    raw.frame(
        &mut out,
        ApiKey::Produce,
        9,
        &produce_request("kept", 2, b"acks=2 closes the connection"),
    );
    raw.frame(
        &mut out,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    raw.stream.write_all(&out).unwrap();
    let _: FetchResponse = raw.read(ApiKey::Fetch, 12, slow);
    let _: ApiVersionsResponse = raw.read(ApiKey::ApiVersions, 3, versions);
    assert!(
        raw.closed(),
        "the connection stayed open after a closing request"
    );
}

/// A `/proc/<pid>/status` field in KiB.
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
