//! Every advertised version of OffsetDelete, ListGroups and DescribeCluster over a raw socket
//! (requests encoded and responses decoded with kafka-protocol's client side), and the
//! authorized-operations fields of Metadata (v8+) and DescribeGroups (v3+) at every version
//! that carries them.

mod common;

use common::{kafka_python, Broker, Client};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringbroker_broker::api::SUPPORTED;

fn range(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let &(_, min, max) = SUPPORTED.iter().find(|(a, _, _)| *a == api).unwrap();
    min..=max
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Bits of Kafka's AclOperation codes.
fn bits(ops: &[u8]) -> i32 {
    ops.iter().fold(0, |b, &op| b | (1 << op))
}
const TOPIC_OPS: &[u8] = &[3, 4, 5, 6, 7, 8, 10, 11];
const GROUP_OPS: &[u8] = &[3, 6, 8];
const CLUSTER_OPS: &[u8] = &[5, 7, 8, 9, 10, 11, 12];

fn commit_simple(c: &mut Client, group: &str, topic: &str, partition: i32) {
    use kafka_protocol::messages::offset_commit_request::*;
    let r: OffsetCommitResponse = c.call(
        ApiKey::OffsetCommit,
        8,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(1)])]),
    );
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
}

#[test]
fn every_version_of_the_group_and_cluster_admin_apis_answers_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, "t", "2"], "");
    let mut c = Client::connect(&broker.addr);
    assert_eq!(range(ApiKey::OffsetDelete), 0..=0);
    assert_eq!(range(ApiKey::ListGroups), 0..=5);
    assert_eq!(range(ApiKey::DescribeCluster), 0..=2);

    // OffsetDelete.
    for v in range(ApiKey::OffsetDelete) {
        use kafka_protocol::messages::offset_delete_request::*;
        let group = format!("od-v{v}");
        commit_simple(&mut c, &group, "t", 0);
        let topic = |name: &str| {
            OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s(name)))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])
        };
        let r: OffsetDeleteResponse = c.call(
            ApiKey::OffsetDelete,
            v,
            &OffsetDeleteRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_topics(vec![topic("t"), topic("missing")]),
        );
        assert_eq!(r.error_code, 0, "OffsetDelete v{v}");
        let codes: Vec<i16> = r
            .topics
            .iter()
            .map(|t| t.partitions[0].error_code)
            .collect();
        assert_eq!(codes, [0, 3], "OffsetDelete v{v}");
        let r: OffsetDeleteResponse = c.call(
            ApiKey::OffsetDelete,
            v,
            &OffsetDeleteRequest::default()
                .with_group_id(GroupId(s("never-seen")))
                .with_topics(vec![topic("t")]),
        );
        assert_eq!(r.error_code, 69, "GROUP_ID_NOT_FOUND, v{v}");
        assert!(r.topics.is_empty());
    }

    // ListGroups: every version lists the group; v4+ filters by state, v5+ by type.
    commit_simple(&mut c, "listed", "t", 1);
    for v in range(ApiKey::ListGroups) {
        let r: ListGroupsResponse = c.call(ApiKey::ListGroups, v, &ListGroupsRequest::default());
        assert_eq!(r.error_code, 0);
        let g = r
            .groups
            .iter()
            .find(|g| &*g.group_id.0 == "listed")
            .unwrap_or_else(|| panic!("ListGroups v{v}: {:?}", r.groups));
        assert_eq!(&*g.protocol_type, "consumer");
        if v >= 4 {
            assert_eq!(&*g.group_state, "Empty", "v{v}");
            let mut only = |states: &[&str]| -> usize {
                let req = ListGroupsRequest::default()
                    .with_states_filter(states.iter().map(|x| s(x)).collect());
                let r: ListGroupsResponse = c.call(ApiKey::ListGroups, v, &req);
                r.groups.len()
            };
            assert!(
                only(&["empty"]) >= 1,
                "v{v}: states are compared without case"
            );
            assert_eq!(only(&["Stable"]), 0, "v{v}");
        }
        if v >= 5 {
            assert_eq!(&*g.group_type, "classic");
            for (types, listed) in [(&["Classic"][..], true), (&["consumer"][..], false)] {
                let req = ListGroupsRequest::default()
                    .with_types_filter(types.iter().map(|x| s(x)).collect());
                let r: ListGroupsResponse = c.call(ApiKey::ListGroups, v, &req);
                assert_eq!(
                    r.groups.iter().any(|g| &*g.group_id.0 == "listed"),
                    listed,
                    "ListGroups v{v} types {types:?}"
                );
            }
        }
    }

    // DescribeCluster.
    let port: i32 = broker.addr.rsplit(':').next().unwrap().parse().unwrap();
    for v in range(ApiKey::DescribeCluster) {
        for asked in [false, true] {
            let mut req =
                DescribeClusterRequest::default().with_include_cluster_authorized_operations(asked);
            if v >= 2 {
                req = req.with_include_fenced_brokers(true);
            }
            let r: DescribeClusterResponse = c.call(ApiKey::DescribeCluster, v, &req);
            assert_eq!(r.error_code, 0, "DescribeCluster v{v}");
            assert!(!r.cluster_id.is_empty());
            assert_eq!(r.controller_id.0, 0);
            assert_eq!(r.brokers.len(), 1);
            let b = &r.brokers[0];
            assert_eq!((b.broker_id.0, b.port, b.rack.clone()), (0, port, None));
            assert_eq!(&*b.host, "127.0.0.1");
            assert!(!b.is_fenced);
            let expected = if asked { bits(CLUSTER_OPS) } else { i32::MIN };
            assert_eq!(r.cluster_authorized_operations, expected, "v{v}");
            if v >= 1 {
                assert_eq!(r.endpoint_type, 1, "a broker endpoint");
            }
        }
        if v >= 1 {
            for (endpoint, error) in [(2i8, 114i16), (7, 115)] {
                let r: DescribeClusterResponse = c.call(
                    ApiKey::DescribeCluster,
                    v,
                    &DescribeClusterRequest::default().with_endpoint_type(endpoint),
                );
                assert_eq!(
                    r.error_code, error,
                    "DescribeCluster v{v} endpoint {endpoint}"
                );
                assert!(r.error_message.is_some());
            }
        }
    }

    // Metadata v8+: topic operations when asked; cluster operations in v8-10.
    for v in 8..=*range(ApiKey::Metadata).end() {
        for asked in [false, true] {
            let mut req = MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(s("t"))))]))
                .with_allow_auto_topic_creation(false)
                .with_include_topic_authorized_operations(asked);
            if v <= 10 {
                req = req.with_include_cluster_authorized_operations(asked);
            }
            let r: MetadataResponse = c.call(ApiKey::Metadata, v, &req);
            let expected = if asked { bits(TOPIC_OPS) } else { i32::MIN };
            assert_eq!(
                r.topics[0].topic_authorized_operations, expected,
                "Metadata v{v}"
            );
            if v <= 10 {
                let expected = if asked { bits(CLUSTER_OPS) } else { i32::MIN };
                assert_eq!(r.cluster_authorized_operations, expected, "Metadata v{v}");
            }
        }
    }

    // DescribeGroups v3+: group operations when asked.
    for v in 3..=*range(ApiKey::DescribeGroups).end() {
        for asked in [false, true] {
            let r: DescribeGroupsResponse = c.call(
                ApiKey::DescribeGroups,
                v,
                &DescribeGroupsRequest::default()
                    .with_groups(vec![GroupId(s("listed"))])
                    .with_include_authorized_operations(asked),
            );
            let expected = if asked { bits(GROUP_OPS) } else { i32::MIN };
            assert_eq!(
                r.groups[0].authorized_operations, expected,
                "DescribeGroups v{v}"
            );
        }
    }
}
