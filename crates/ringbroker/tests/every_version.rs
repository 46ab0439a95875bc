//! Every API at every version we advertise, over a raw socket: requests encoded and responses
//! decoded with kafka-protocol's client side, so a response that some client version would
//! choke on fails here even if no installed client uses that version.

mod common;

use bytes::Bytes;
use common::{Broker, Client};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringbroker_broker::api::SUPPORTED;

fn range(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let &(_, min, max) = SUPPORTED.iter().find(|(a, _, _)| *a == api).unwrap();
    // Produce v0-2 are advertised for old librdkafka but refused (see api/mod.rs).
    if api == ApiKey::Produce {
        3..=max
    } else {
        min..=max
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

#[test]
fn every_advertised_version_of_every_api_answers_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);

    for v in range(ApiKey::ApiVersions) {
        let mut req = ApiVersionsRequest::default();
        if v >= 3 {
            req = req
                .with_client_software_name(StrBytes::from_static_str("t"))
                .with_client_software_version(StrBytes::from_static_str("1"));
        }
        let r: ApiVersionsResponse = c.call(ApiKey::ApiVersions, v, &req);
        assert_eq!(r.error_code, 0);
        assert_eq!(r.api_keys.len(), SUPPORTED.len());
    }

    for v in range(ApiKey::CreateTopics) {
        let topic = creatable(&format!("v{v}"), 2);
        let req = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(5000);
        let r: CreateTopicsResponse = c.call(ApiKey::CreateTopics, v, &req);
        assert_eq!(r.topics[0].error_code, 0, "CreateTopics v{v}");
    }
    let again: CreateTopicsResponse = c.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![creatable("v7", 2)]),
    );
    assert_eq!(again.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");

    let mut topic_id = uuid::Uuid::nil();
    for v in range(ApiKey::Metadata) {
        let topics =
            vec![metadata_request::MetadataRequestTopic::default().with_name(Some(name("v7")))];
        let mut req = MetadataRequest::default().with_topics(Some(topics));
        if v >= 4 {
            req = req.with_allow_auto_topic_creation(false);
        }
        let r: MetadataResponse = c.call(ApiKey::Metadata, v, &req);
        assert_eq!(r.brokers.len(), 1);
        assert_eq!(r.topics[0].error_code, 0, "Metadata v{v}");
        assert_eq!(r.topics[0].partitions.len(), 2);
        if v >= 10 {
            topic_id = r.topics[0].topic_id;
        }
    }
    assert!(!topic_id.is_nil());

    for v in range(ApiKey::Produce) {
        let batch =
            ringbroker_protocol::batch::build_batch(0, 1000, &[format!("produce v{v}").as_bytes()]);
        let pd = produce_request::PartitionProduceData::default()
            .with_index(1)
            .with_records(Some(Bytes::from(batch)));
        let td = produce_request::TopicProduceData::default()
            .with_name(name("v7"))
            .with_partition_data(vec![pd]);
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![td]);
        let r: ProduceResponse = c.call(ApiKey::Produce, v, &req);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(
            (p.error_code, p.base_offset),
            (0, (v - 3) as i64),
            "Produce v{v}"
        );
    }
    let produced = range(ApiKey::Produce).count() as i64;

    for v in range(ApiKey::Fetch) {
        let part = fetch_request::FetchPartition::default()
            .with_partition(1)
            .with_fetch_offset(0)
            .with_partition_max_bytes(1 << 20);
        let mut topic = fetch_request::FetchTopic::default().with_partitions(vec![part]);
        topic = if v >= 13 {
            topic.with_topic_id(topic_id)
        } else {
            topic.with_topic(name("v7"))
        };
        let mut req = FetchRequest::default()
            .with_max_wait_ms(10)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![topic]);
        if v < 15 {
            req = req.with_replica_id(BrokerId(-1));
        }
        let r: FetchResponse = c.call(ApiKey::Fetch, v, &req);
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "Fetch v{v}");
        assert_eq!(p.high_watermark, produced);
        assert!(
            p.records.as_ref().unwrap().len() > 61 * produced as usize,
            "Fetch v{v} returned the batches"
        );
    }

    for v in range(ApiKey::ListOffsets) {
        // One request per timestamp: a partition named twice in one request is
        // INVALID_REQUEST, as in Kafka.
        let offset_of = |c: &mut Client, ts: i64| {
            let part = list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(1)
                .with_timestamp(ts);
            let topic = list_offsets_request::ListOffsetsTopic::default()
                .with_name(name("v7"))
                .with_partitions(vec![part]);
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![topic]);
            let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, v, &req);
            let p = &r.topics[0].partitions[0];
            (p.error_code, p.offset)
        };
        assert_eq!(
            offset_of(&mut c, -1),
            (0, produced),
            "ListOffsets v{v} latest"
        );
        assert_eq!(offset_of(&mut c, -2), (0, 0), "ListOffsets v{v} earliest");
    }

    for v in range(ApiKey::DeleteTopics) {
        let topic = format!("v{}", v + 1);
        let req = if v >= 6 {
            DeleteTopicsRequest::default()
                .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(name(&topic)))])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![name(&topic)])
        };
        let r: DeleteTopicsResponse = c.call(ApiKey::DeleteTopics, v, &req.with_timeout_ms(5000));
        assert_eq!(r.responses[0].error_code, 0, "DeleteTopics v{v} of {topic}");
    }
    assert!(
        !broker.data_dir.join("v3-0").exists(),
        "deleted topic's files are gone"
    );
}

fn creatable(topic: &str, partitions: i32) -> create_topics_request::CreatableTopic {
    create_topics_request::CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
}
