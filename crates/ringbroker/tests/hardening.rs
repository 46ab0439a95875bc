//! Bad input, limits and faults against the real binary: each bad input gets its exact answer
//! or the close of its own connection, nothing reaches the log, and everyone else is served.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What the broker did with one raw frame.
#[derive(Debug, PartialEq)]
enum Reply {
    /// It closed the connection without answering.
    Closed,
    /// It answered (the response frame without its size prefix).
    Answer(Vec<u8>),
    /// Neither within the timeout (e.g. a long-poll Fetch it is honouring).
    Quiet,
}

fn send_raw(addr: &str, bytes: &[u8], timeout: Duration) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(timeout)).unwrap();
    if s.write_all(bytes).is_err() {
        return Reply::Closed;
    }
    let mut size = [0u8; 4];
    match s.read_exact(&mut size) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Reply::Quiet
        }
        Err(_) => return Reply::Closed,
    }
    let mut body = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    match s.read_exact(&mut body) {
        Ok(()) => Reply::Answer(body),
        Err(_) => Reply::Closed,
    }
}

fn header(api: ApiKey, version: i16) -> BytesMut {
    let mut b = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("hardening")))
        .encode(&mut b, api.request_header_version(version))
        .unwrap();
    b
}

fn frame(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + head.len() + body.len());
    f.extend_from_slice(&((head.len() + body.len()) as i32).to_be_bytes());
    f.extend_from_slice(head);
    f.extend_from_slice(body);
    f
}

fn encode<T: Encodable>(body: &T, version: i16) -> Option<Vec<u8>> {
    let mut b = BytesMut::new();
    body.encode(&mut b, version).ok()?;
    Some(b.to_vec())
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// A request of `api` whose every array holds one default element (so nested array counts
/// are on the wire too), encoded at `version`; `None` where that does not encode.
fn populated(api: ApiKey, version: i16) -> Option<Vec<u8>> {
    use kafka_protocol::messages::create_topics_request::*;
    use kafka_protocol::messages::fetch_request::*;
    use kafka_protocol::messages::join_group_request::*;
    use kafka_protocol::messages::leave_group_request::*;
    use kafka_protocol::messages::list_offsets_request::*;
    use kafka_protocol::messages::metadata_request::*;
    use kafka_protocol::messages::offset_commit_request::*;
    use kafka_protocol::messages::offset_fetch_request::*;
    use kafka_protocol::messages::produce_request::*;
    use kafka_protocol::messages::sync_group_request::*;
    let name = || StrBytes::from_static_str("t");
    match api {
        ApiKey::Produce => encode(
            &ProduceRequest::default().with_acks(1).with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(name()))
                    .with_partition_data(vec![PartitionProduceData::default().with_records(Some(
                        Bytes::from(ringbroker_protocol::batch::build_batch(0, 0, &[b"v"])),
                    ))]),
            ]),
            version,
        ),
        ApiKey::Fetch => encode(
            &FetchRequest::default()
                .with_max_wait_ms(0)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(name()))
                    .with_partitions(vec![FetchPartition::default()])])
                .with_forgotten_topics_data(vec![ForgottenTopic::default()
                    .with_topic(TopicName(name()))
                    .with_partitions(vec![0])]),
            version,
        ),
        ApiKey::ListOffsets => encode(
            &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(name()))
                .with_partitions(vec![ListOffsetsPartition::default()])]),
            version,
        ),
        ApiKey::Metadata => encode(
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(TopicName(name())))
            ])),
            version,
        ),
        ApiKey::ApiVersions => encode(&ApiVersionsRequest::default(), version),
        ApiKey::CreateTopics => encode(
            &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(name()))
                .with_assignments(vec![
                    CreatableReplicaAssignment::default().with_broker_ids(vec![BrokerId(0)])
                ])
                .with_configs(vec![CreatableTopicConfig::default().with_name(name())])]),
            version,
        ),
        ApiKey::DeleteTopics => encode(
            &DeleteTopicsRequest::default()
                .with_topic_names(vec![TopicName(name())])
                .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(TopicName(name())))]),
            version,
        ),
        ApiKey::FindCoordinator => encode(
            &FindCoordinatorRequest::default()
                .with_key(name())
                .with_coordinator_keys(vec![name()]),
            version,
        ),
        ApiKey::JoinGroup => encode(
            &JoinGroupRequest::default()
                .with_protocol_type(name())
                .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(name())]),
            version,
        ),
        ApiKey::SyncGroup => encode(
            &SyncGroupRequest::default().with_assignments(vec![
                SyncGroupRequestAssignment::default().with_member_id(name()),
            ]),
            version,
        ),
        ApiKey::Heartbeat => encode(&HeartbeatRequest::default(), version),
        ApiKey::LeaveGroup => encode(
            &LeaveGroupRequest::default()
                .with_member_id(name())
                .with_members(vec![MemberIdentity::default().with_member_id(name())]),
            version,
        ),
        ApiKey::OffsetCommit => encode(
            &OffsetCommitRequest::default().with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(name()))
                .with_partitions(vec![OffsetCommitRequestPartition::default()])]),
            version,
        ),
        ApiKey::OffsetFetch => encode(
            &OffsetFetchRequest::default()
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(TopicName(name()))
                    .with_partition_indexes(vec![0])]))
                .with_groups(vec![OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(name()))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(TopicName(name()))
                        .with_partition_indexes(vec![0])]))]),
            version,
        ),
        ApiKey::ListGroups => encode(
            &ListGroupsRequest::default().with_states_filter(vec![name()]),
            version,
        ),
        ApiKey::DescribeGroups => encode(
            &DescribeGroupsRequest::default().with_groups(vec![GroupId(name())]),
            version,
        ),
        ApiKey::DeleteGroups => encode(
            &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(name())]),
            version,
        ),
        ApiKey::InitProducerId => encode(&InitProducerIdRequest::default(), version),
        ApiKey::CreatePartitions => encode(
            &CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(TopicName(name()))
                    .with_assignments(Some(vec![
                        create_partitions_request::CreatePartitionsAssignment::default()
                            .with_broker_ids(vec![BrokerId(0)]),
                    ])),
            ]),
            version,
        ),
        ApiKey::DeleteRecords => encode(
            &DeleteRecordsRequest::default().with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(TopicName(name()))
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default(),
                    ]),
            ]),
            version,
        ),
        ApiKey::DescribeConfigs => encode(
            &DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name())
                    .with_configuration_keys(Some(vec![name()])),
            ]),
            version,
        ),
        ApiKey::AlterConfigs => encode(
            &AlterConfigsRequest::default().with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name())
                    .with_configs(vec![alter_configs_request::AlterableConfig::default()
                        .with_name(name())
                        .with_value(Some(name()))]),
            ]),
            version,
        ),
        ApiKey::IncrementalAlterConfigs => encode(
            &IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name())
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(name())
                            .with_value(Some(name())),
                    ]),
            ]),
            version,
        ),
        ApiKey::DescribeLogDirs => encode(
            &DescribeLogDirsRequest::default().with_topics(Some(vec![
                describe_log_dirs_request::DescribableLogDirTopic::default()
                    .with_topic(TopicName(name()))
                    .with_partitions(vec![0]),
            ])),
            version,
        ),
        ApiKey::OffsetForLeaderEpoch => encode(
            &OffsetForLeaderEpochRequest::default().with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(TopicName(name()))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default(),
                    ]),
            ]),
            version,
        ),
        ApiKey::DescribeProducers => encode(
            &DescribeProducersRequest::default().with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(TopicName(name()))
                    .with_partition_indexes(vec![0]),
            ]),
            version,
        ),
        ApiKey::OffsetDelete => encode(
            &OffsetDeleteRequest::default()
                .with_group_id(GroupId(name()))
                .with_topics(vec![
                    offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(name()))
                        .with_partitions(vec![
                            offset_delete_request::OffsetDeleteRequestPartition::default(),
                        ]),
                ]),
            version,
        ),
        ApiKey::DescribeCluster => encode(&DescribeClusterRequest::default(), version),
        ApiKey::AlterPartitionReassignments => encode(
            &AlterPartitionReassignmentsRequest::default().with_topics(vec![
                alter_partition_reassignments_request::ReassignableTopic::default()
                    .with_name(TopicName(name()))
                    .with_partitions(vec![
                        alter_partition_reassignments_request::ReassignablePartition::default()
                            .with_replicas(Some(vec![BrokerId(0)])),
                    ]),
            ]),
            version,
        ),
        ApiKey::ListPartitionReassignments => encode(
            &ListPartitionReassignmentsRequest::default().with_topics(Some(vec![
                list_partition_reassignments_request::ListPartitionReassignmentsTopics::default()
                    .with_name(TopicName(name()))
                    .with_partition_indexes(vec![0]),
            ])),
            version,
        ),
        ApiKey::CreateAcls => encode(
            &CreateAclsRequest::default().with_creations(vec![
                create_acls_request::AclCreation::default()
                    .with_resource_type(2)
                    .with_resource_name(name())
                    .with_resource_pattern_type(3)
                    .with_principal(name())
                    .with_host(name())
                    .with_operation(4)
                    .with_permission_type(3),
            ]),
            version,
        ),
        ApiKey::DescribeAcls => encode(
            &DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_resource_name_filter(Some(name()))
                .with_pattern_type_filter(1)
                .with_principal_filter(Some(name()))
                .with_host_filter(Some(name()))
                .with_operation(1)
                .with_permission_type(1),
            version,
        ),
        ApiKey::DeleteAcls => encode(
            &DeleteAclsRequest::default().with_filters(vec![
                delete_acls_request::DeleteAclsFilter::default()
                    .with_resource_type_filter(1)
                    .with_resource_name_filter(Some(name()))
                    .with_pattern_type_filter(1)
                    .with_principal_filter(Some(name()))
                    .with_host_filter(Some(name()))
                    .with_operation(1)
                    .with_permission_type(1),
            ]),
            version,
        ),
        ApiKey::SaslHandshake => encode(
            &SaslHandshakeRequest::default().with_mechanism(name()),
            version,
        ),
        ApiKey::SaslAuthenticate => encode(
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"n,,n=x,r=y")),
            version,
        ),
        ApiKey::DescribeUserScramCredentials => encode(
            &DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                describe_user_scram_credentials_request::UserName::default().with_name(name()),
            ])),
            version,
        ),
        ApiKey::AlterUserScramCredentials => encode(
            &AlterUserScramCredentialsRequest::default()
                .with_deletions(vec![
                    alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                        .with_name(name())
                        .with_mechanism(1),
                ])
                .with_upsertions(vec![
                    alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                        .with_name(name())
                        .with_mechanism(1)
                        .with_iterations(4096)
                        .with_salt(Bytes::from_static(b"salt"))
                        .with_salted_password(Bytes::from_static(&[7; 32])),
                ]),
            version,
        ),
        other => panic!(
            "no populated request for {other:?}: add one (every advertised API must be probed)"
        ),
    }
}

#[test]
fn hostile_array_counts_in_every_advertised_request_cost_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    // Every array count position: each byte offset of a populated request body overwritten
    // with a 2^31-1 (classic arrays, INT32) and a 2^32-1 (compact arrays, varint) count.
    let mut frames = Vec::new();
    for &(api, min, max) in ringbroker_broker::api::SUPPORTED {
        for version in min..=max {
            let Some(body) = populated(api, version) else {
                continue;
            };
            let head = header(api, version);
            for at in 0..body.len() {
                for pattern in [
                    &[0x7f, 0xff, 0xff, 0xff][..],
                    &[0xff, 0xff, 0xff, 0xff, 0x0f][..],
                ] {
                    let mut b = body.clone();
                    let end = (at + pattern.len()).min(b.len());
                    b.splice(at..end, pattern.iter().copied());
                    frames.push(frame(&head, &b));
                }
            }
        }
    }
    assert!(frames.len() > 2000, "only {} hostile frames", frames.len());
    let rss_before = vm_kib(broker.pid, "VmRSS:");
    let started = Instant::now();
    let chunks: Vec<Vec<Vec<u8>>> = frames
        .chunks(frames.len() / 16 + 1)
        .map(|c| c.to_vec())
        .collect();
    let addr = broker.addr.clone();
    let answered: usize = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let addr = addr.clone();
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter(|f| {
                            matches!(send_raw(&addr, f, Duration::from_secs(3)), Reply::Answer(_))
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let hwm = vm_kib(broker.pid, "VmHWM:");
    eprintln!(
        "{} hostile frames in {:.1?}: {answered} answered, the rest closed or ignored; broker RSS {} KiB before, peak {} KiB",
        frames.len(),
        started.elapsed(),
        rss_before,
        hwm
    );
    // Still alive, still serving real clients, memory bounded.
    assert!(hwm < 512 * 1024, "peak RSS {hwm} KiB");
    let input: String = (0..50).map(|i| format!("k{i}\tv{i}\n")).collect();
    kcat_produce(&broker.addr, "after-hostile", &input);
    assert_eq!(kcat_consume_all(&broker.addr, "after-hostile").len(), 50);
    // Warnings are rate limited: far fewer lines than closed connections.
    let log = broker.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("closing connection"))
        .count();
    assert!(
        warned < frames.len() / 4,
        "{warned} warnings for {} frames",
        frames.len()
    );
    assert!(
        log.contains("suppressed="),
        "the log says how many warnings it suppressed"
    );
}

fn produce_one(addr: &str, topic: &str, records: Vec<u8>) -> i16 {
    use kafka_protocol::messages::produce_request::*;
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])]);
    let mut c = Client::connect(addr);
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    r.responses[0].partition_responses[0].error_code
}

fn recrc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn bad_frames_and_batches_get_their_answer_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &[
            "--frame-bytes-max",
            "1048576",
            "--max-message-bytes",
            "100000",
            "--cores",
            "0",
        ],
    );
    let addr = broker.addr.clone();
    kafka_python(&["create", &addr, "probe", "1"], "");
    let t = Duration::from_secs(5);

    // Framing: a negative size, a size over --frame-bytes-max (no allocation: RSS stays put).
    assert_eq!(send_raw(&addr, &(-5i32).to_be_bytes(), t), Reply::Closed);
    let rss = vm_kib(broker.pid, "VmRSS:");
    assert_eq!(
        send_raw(&addr, &(1i32 << 30).to_be_bytes(), t),
        Reply::Closed
    );
    assert!(vm_kib(broker.pid, "VmRSS:") < rss + 16 * 1024);
    // An unknown API key; an unsupported version of another API; garbage bodies.
    let mut unknown = BytesMut::new();
    unknown.put_i16(999);
    unknown.put_i16(0);
    unknown.put_i32(1);
    unknown.put_i16(-1);
    assert_eq!(send_raw(&addr, &frame(&unknown, b""), t), Reply::Closed);
    assert_eq!(
        send_raw(&addr, &frame(&header(ApiKey::Metadata, 99), b""), t),
        Reply::Closed
    );
    assert_eq!(
        send_raw(&addr, &frame(&header(ApiKey::Metadata, 12), b"\x05\xff"), t),
        Reply::Closed
    );
    assert_eq!(
        send_raw(&addr, &frame(&header(ApiKey::Produce, 9), b"\x00"), t),
        Reply::Closed
    );
    assert_eq!(
        send_raw(&addr, &[0, 0, 0, 3, 0, 18, 0], t),
        Reply::Closed,
        "truncated header"
    );
    // ApiVersions at an unknown version: UNSUPPORTED_VERSION with the supported list (KIP-511).
    match send_raw(&addr, &frame(&header(ApiKey::ApiVersions, 99), b""), t) {
        Reply::Answer(b) => {
            let mut b = Bytes::from(b);
            let _h = ResponseHeader::decode(&mut b, 0).unwrap();
            let r = ApiVersionsResponse::decode(&mut b, 0).unwrap();
            assert_eq!(r.error_code, 35);
            assert!(r
                .api_keys
                .iter()
                .any(|k| k.api_key == ApiKey::Produce as i16));
        }
        other => panic!("ApiVersions v99: {other:?}"),
    }

    // Batches: bad CRC, bad magic, wrong length, record count that does not match, too large.
    let good = ringbroker_protocol::batch::build_batch(0, 1, &[b"one", b"two"]);
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 0x55;
    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    let mut bad_length = good.clone();
    let len = i32::from_be_bytes(bad_length[8..12].try_into().unwrap());
    bad_length[8..12].copy_from_slice(&(len + 9).to_be_bytes());
    let mut bad_count = good.clone();
    bad_count[57..61].copy_from_slice(&5i32.to_be_bytes());
    recrc(&mut bad_count);
    let big_value = vec![b'x'; 150_000];
    let too_large = ringbroker_protocol::batch::build_batch(0, 1, &[&big_value]);
    for (what, batch, code) in [
        ("bad CRC", bad_crc, 2),
        ("bad magic", bad_magic, 2),
        ("wrong length", bad_length, 2),
        ("record count", bad_count, 2),
        ("over --max-message-bytes", too_large, 10),
    ] {
        assert_eq!(produce_one(&addr, "probe", batch), code, "{what}");
    }
    let log_file = dir.path().join("probe-0").join("00000000000000000000.log");
    assert_eq!(
        std::fs::metadata(&log_file).unwrap().len(),
        0,
        "nothing written"
    );
    // A good batch still goes in, at offset 0.
    assert_eq!(produce_one(&addr, "probe", good.clone()), 0);
    assert_eq!(
        std::fs::metadata(&log_file).unwrap().len(),
        good.len() as u64
    );
    let got = kcat_consume_all(&addr, "probe");
    assert_eq!(got.len(), 2);
    assert!(got[0].starts_with("0\t0\t"), "{got:?}");
    // A topic's own max.message.bytes wins over the broker's.
    kafka_python(
        &["create", &addr, "small", "1", "max.message.bytes=600"],
        "",
    );
    let kilo = vec![b'k'; 1000];
    let one_kib = ringbroker_protocol::batch::build_batch(0, 1, &[&kilo]);
    assert_eq!(produce_one(&addr, "small", one_kib.clone()), 10);
    assert_eq!(produce_one(&addr, "probe", one_kib), 0);
    assert_eq!(produce_one(&addr, "small", good.clone()), 0);
    let log = broker.log();
    assert!(log.contains("rejected record batch"), "{log}");
    assert!(log.contains("peer=127.0.0.1:"), "warnings name the peer");
}

/// Raises this process's open-files limit (children inherit it).
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(want.max(lim.rlim_cur));
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[test]
fn two_thousand_concurrent_connections_all_get_api_versions() {
    const N: usize = 2000;
    let limit = raise_nofile(2 * N as u64 + 512);
    assert!(
        limit >= N as u64 + 256,
        "open-files limit {limit} too low for {N} connections"
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    // Warm up (first requests allocate per-shard state), then measure.
    for _ in 0..4 {
        let mut c = Client::connect(&broker.addr);
        let _: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = vm_kib(broker.pid, "VmRSS:");
    let request = frame(
        &header(ApiKey::ApiVersions, 3),
        &encode(&ApiVersionsRequest::default(), 3).unwrap(),
    );
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|i| {
            let s =
                TcpStream::connect(&broker.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s
        })
        .collect();
    for c in &mut conns {
        c.write_all(&request).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut size = [0u8; 4];
        c.read_exact(&mut size)
            .unwrap_or_else(|e| panic!("connection {i} got no answer: {e}"));
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        c.read_exact(&mut body).unwrap();
        let mut b = Bytes::from(body);
        let h = ResponseHeader::decode(&mut b, 0).unwrap();
        assert_eq!(h.correlation_id, 7);
        let r = ApiVersionsResponse::decode(&mut b, 3).unwrap();
        assert_eq!(r.error_code, 0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_open = vm_kib(broker.pid, "VmRSS:");
    let per_conn = (rss_open.saturating_sub(rss_before) * 1024) / N as u64;
    eprintln!(
        "{N} idle connections: broker RSS {rss_before} KiB -> {rss_open} KiB, {per_conn} bytes per idle connection"
    );
    let (_, text) = broker.http_get("/metrics");
    let open: f64 = text
        .lines()
        .filter(|l| l.starts_with("ringbroker_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(open as usize, N);
    assert!(
        per_conn < 128 * 1024,
        "{per_conn} bytes per idle connection"
    );
}

#[test]
fn connections_beyond_max_connections_are_closed_and_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--max-connections", "5"]);
    let mut held: Vec<Client> = (0..5).map(|_| Client::connect(&broker.addr)).collect();
    for c in &mut held {
        let _: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    }
    let request = frame(
        &header(ApiKey::ApiVersions, 3),
        &encode(&ApiVersionsRequest::default(), 3).unwrap(),
    );
    assert_eq!(
        send_raw(&broker.addr, &request, Duration::from_secs(5)),
        Reply::Closed
    );
    for c in &mut held {
        let _: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    }
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(
        send_raw(&broker.addr, &request, Duration::from_secs(5)),
        Reply::Answer(_)
    ) {
        assert!(Instant::now() < deadline, "a freed slot was never reused");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(broker.log().contains("connection limit reached"));
}

#[test]
fn sigterm_under_load_exits_zero_quickly_and_a_second_broker_cannot_take_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    // A second broker on the same data dir is refused with a clear message.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another running ringbroker"),
        "{stderr}"
    );

    // SIGTERM while a producer is sending: exit 0, promptly, with the clean marker.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/clients/confluent_kafka_client.py");
    let mut producer = std::process::Command::new("python3")
        .arg(&script)
        .args([
            "produce-until-killed",
            &broker.addr,
            "busy",
            "v",
            dir.path().join("acked.txt").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let status = broker.stop();
    let took = started.elapsed();
    let _ = producer.kill();
    let _ = producer.wait();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert!(dir.path().join("meta/clean-shutdown").exists());
    eprintln!("SIGTERM under load: exited 0 in {took:.1?}");
    drop(broker);
    let broker = Broker::start(dir.path(), &[]);
    assert!(
        broker.log().contains("trusted clean shutdown"),
        "{}",
        broker.log()
    );
}

#[test]
fn a_consumer_that_never_reads_costs_no_broker_memory_and_blocks_no_one() {
    use kafka_protocol::messages::fetch_request::*;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, "wide", "1"], "");
    let value = "v".repeat(10_000);
    let input: String = (0..3000).map(|i| format!("k{i}\t{value}\n")).collect();
    kcat_produce(&broker.addr, "wide", &input);
    // ~30 MB per Fetch, 200 Fetches pipelined on one socket that is never read: ~6 GB asked for.
    let name = TopicName(StrBytes::from_static_str("wide"));
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(64 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name)
            .with_partitions(vec![
                FetchPartition::default().with_partition_max_bytes(64 << 20)
            ])]);
    let one = frame(&header(ApiKey::Fetch, 12), &encode(&fetch, 12).unwrap());
    let rss_before = vm_kib(broker.pid, "VmRSS:");
    let mut stalled = TcpStream::connect(&broker.addr).unwrap();
    stalled
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for _ in 0..200 {
        if stalled.write_all(&one).is_err() {
            break; // the broker stopped reading: back-pressure reached us
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_during = vm_kib(broker.pid, "VmRSS:");
    // Everyone else is still served.
    run(
        "timeout",
        &["30", "kcat", "-b", &broker.addr, "-t", "other", "-P"],
        "a\nb\n",
    );
    assert_eq!(kcat_consume_all(&broker.addr, "other").len(), 2);
    let grown = rss_during.saturating_sub(rss_before);
    eprintln!("stalled consumer: broker RSS {rss_before} KiB -> {rss_during} KiB");
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB for a consumer that never reads"
    );
    drop(stalled);
}
