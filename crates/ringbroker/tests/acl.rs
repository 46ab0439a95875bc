//! ACLs end to end (issue #16): the authorizer with real clients (confluent-kafka's
//! AdminClient, kafka-python's KafkaAdminClient, their producers and consumers, kcat) as SASL
//! users, the ACL APIs' errors through the raw protocol, ACLs kept across a restart, and a
//! cluster where an ACL created through one broker is enforced by the others.

mod common;

use common::cluster::Cluster;
use common::{run, run_status, Broker, Client};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::path::Path;
use std::time::{Duration, Instant};

const ADMIN: (&str, &str) = ("admin", "admin-secret");
const ALICE: (&str, &str) = ("alice", "alice-secret");
const BOB: (&str, &str) = ("bob", "bob-secret");

fn script() -> String {
    format!(
        "{}/../../tests/clients/acl_clients.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Creates the users' SCRAM credentials (both mechanisms) in `data_dir` with
/// `ringbroker user create`, before the broker starts.
fn write_users(data_dir: &Path, users: &[(&str, &str)]) {
    for (user, password) in users {
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let (ok, out) = common::sasl::user_create(data_dir, user, mechanism, password);
            assert!(ok, "user create {user} {mechanism}: {out}");
        }
    }
}

/// Runs the driver with `lib` (confluent, kafka-python) as `user` ("-": anonymous on
/// PLAINTEXT); its output lines.
fn client(lib: &str, addr: &str, user: (&str, &str), command: &str, args: &[&str]) -> Vec<String> {
    let path = script();
    let mut full = vec![path.as_str(), lib, addr, user.0, user.1, command];
    full.extend_from_slice(args);
    let out = run("timeout", &[&["120", "python3"][..], &full].concat(), "");
    out.lines().map(str::to_string).collect()
}

fn one(lines: Vec<String>) -> String {
    lines.join("\n")
}

/// An ACL entry as the driver takes and prints it.
fn acl<'a>(
    rtype: &'a str,
    name: &'a str,
    pattern: &'a str,
    principal: &'a str,
    op: &'a str,
    perm: &'a str,
) -> [&'a str; 7] {
    [rtype, name, pattern, principal, "*", op, perm]
}

fn kcat_produce_as(addr: &str, user: (&str, &str), topic: &str, value: &str) -> (bool, String) {
    let (ok, out, err) = run_status(
        "timeout",
        &[
            "60",
            "kcat",
            "-b",
            addr,
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            "sasl.mechanism=PLAIN",
            "-X",
            &format!("sasl.username={}", user.0),
            "-X",
            &format!("sasl.password={}", user.1),
            "-X",
            "message.timeout.ms=10000",
            "-P",
            "-t",
            topic,
        ],
        &format!("{value}\n"),
    );
    (ok, format!("{out}{err}"))
}

fn sasl_broker(dir: &Path, extra: &[&str]) -> Broker {
    let mut args = vec![
        "--listeners",
        "SASL_PLAINTEXT://127.0.0.1:0",
        "--sasl-mechanisms",
        "PLAIN,SCRAM-SHA-256",
        "--authorizer",
        "acl",
        "--super-users",
        "User:admin",
    ];
    args.extend_from_slice(extra);
    Broker::start(dir, &args)
}

#[test]
fn producers_and_consumers_need_their_acls_and_acls_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path(), &[ADMIN, ALICE, BOB]);
    let mut broker = sasl_broker(dir.path(), &[]);
    let addr = broker.addr.clone();
    let a = addr.as_str();

    // The super user produces (creating the topics) and reads.
    for t in ["orders", "logs-app", "secret"] {
        assert_eq!(
            one(client("confluent", a, ADMIN, "produce", &[t, "first"])),
            "ok"
        );
    }
    // No ACL at all on "orders": nobody but the super user (allow-everyone is off).
    for lib in ["confluent", "kafka-python"] {
        assert_eq!(
            one(client(lib, a, BOB, "produce", &["orders", "bob-denied"])),
            "error TOPIC_AUTHORIZATION_FAILED",
            "{lib}"
        );
    }
    let (ok, out) = kcat_produce_as(a, BOB, "orders", "bob-kcat");
    assert!(!ok && out.contains("Topic authorization failed"), "{out}");

    // ACLs created with confluent's AdminClient and kafka-python's KafkaAdminClient.
    let created = [
        (
            "confluent",
            acl("topic", "orders", "literal", "User:alice", "write", "allow"),
        ),
        (
            "kafka-python",
            acl("topic", "orders", "literal", "User:alice", "read", "allow"),
        ),
        (
            "confluent",
            acl("group", "alice-", "prefixed", "User:alice", "read", "allow"),
        ),
        (
            "kafka-python",
            acl("topic", "logs-", "prefixed", "User:bob", "all", "allow"),
        ),
        (
            "confluent",
            acl("group", "*", "literal", "User:bob", "read", "allow"),
        ),
    ];
    for (lib, binding) in &created {
        assert_eq!(one(client(lib, a, ADMIN, "create-acl", binding)), "ok");
    }
    // A user without ALTER on the cluster may not create ACLs.
    let grab = acl("topic", "secret", "literal", "User:bob", "all", "allow");
    for lib in ["confluent", "kafka-python"] {
        assert_eq!(
            one(client(lib, a, BOB, "create-acl", &grab)),
            "error CLUSTER_AUTHORIZATION_FAILED",
            "{lib}"
        );
    }
    let everything = ["any", "-", "any", "-", "-", "any", "any"];
    let expected = vec![
        "group * literal User:bob * read allow",
        "group alice- prefixed User:alice * read allow",
        "topic logs- prefixed User:bob * all allow",
        "topic orders literal User:alice * read allow",
        "topic orders literal User:alice * write allow",
    ];
    for lib in ["confluent", "kafka-python"] {
        assert_eq!(
            client(lib, a, ADMIN, "describe-acls", &everything),
            expected,
            "{lib}"
        );
    }
    // MATCH: the entries that apply to a topic named "logs-x" (the prefixed one).
    assert_eq!(
        client(
            "confluent",
            a,
            ADMIN,
            "describe-acls",
            &["topic", "logs-x", "match", "-", "-", "any", "any"]
        ),
        vec!["topic logs- prefixed User:bob * all allow"]
    );

    // WRITE lets alice produce; bob is still refused, and the content did not change.
    assert_eq!(
        one(client(
            "kafka-python",
            a,
            ALICE,
            "produce",
            &["orders", "alice-1"]
        )),
        "ok"
    );
    assert_eq!(
        one(client(
            "confluent",
            a,
            ALICE,
            "produce",
            &["orders", "alice-2"]
        )),
        "ok"
    );
    assert_eq!(
        one(client(
            "kafka-python",
            a,
            BOB,
            "produce",
            &["orders", "bob-again"]
        )),
        "error TOPIC_AUTHORIZATION_FAILED"
    );
    assert_eq!(
        client(
            "confluent",
            a,
            ADMIN,
            "consume",
            &["orders", "admin-check", "3"]
        ),
        vec!["first", "alice-1", "alice-2"]
    );

    // A consumer needs READ on the group too: "other-group" has none for alice.
    for lib in ["confluent", "kafka-python"] {
        assert_eq!(
            one(client(
                lib,
                a,
                ALICE,
                "consume",
                &["orders", "other-group", "3"]
            )),
            "error GROUP_AUTHORIZATION_FAILED",
            "{lib}"
        );
    }
    assert_eq!(
        client(
            "kafka-python",
            a,
            ALICE,
            "consume",
            &["orders", "alice-group", "3"]
        ),
        vec!["first", "alice-1", "alice-2"]
    );
    // Bob: the prefixed ACL gives him logs-app (read and write), not orders.
    assert_eq!(
        one(client(
            "confluent",
            a,
            BOB,
            "produce",
            &["logs-app", "bob-log"]
        )),
        "ok"
    );
    assert_eq!(
        client(
            "confluent",
            a,
            BOB,
            "consume",
            &["logs-app", "bob-group", "2"]
        ),
        vec!["first", "bob-log"]
    );
    assert_eq!(
        one(client(
            "confluent",
            a,
            BOB,
            "consume",
            &["orders", "bob-group2", "1"]
        )),
        "error TOPIC_AUTHORIZATION_FAILED"
    );

    // Metadata lists only the topics a user may describe.
    for lib in ["confluent", "kafka-python"] {
        assert_eq!(
            client(lib, a, ALICE, "topics", &[]),
            vec!["orders"],
            "{lib}"
        );
        assert_eq!(
            client(lib, a, BOB, "topics", &[]),
            vec!["logs-app"],
            "{lib}"
        );
    }

    // DENY beats ALLOW: alice may no longer write to orders.
    let deny = acl("topic", "orders", "literal", "User:alice", "write", "deny");
    assert_eq!(
        one(client("kafka-python", a, ADMIN, "create-acl", &deny)),
        "ok"
    );
    assert_eq!(
        one(client(
            "confluent",
            a,
            ALICE,
            "produce",
            &["orders", "alice-denied"]
        )),
        "error TOPIC_AUTHORIZATION_FAILED"
    );
    // Denials are counted.
    let (_, metrics) = broker.http_get("/metrics");
    assert!(
        metrics.contains("ringbroker_authorization_denied_total{resource_type=\"topic\""),
        "{metrics}"
    );

    // DeleteAcls through both clients: the filter's matches are removed and listed.
    assert_eq!(
        client(
            "confluent",
            a,
            ADMIN,
            "delete-acls",
            &[
                "topic",
                "orders",
                "literal",
                "User:alice",
                "-",
                "write",
                "deny"
            ]
        ),
        vec!["topic orders literal User:alice * write deny"]
    );
    assert_eq!(
        one(client(
            "confluent",
            a,
            ALICE,
            "produce",
            &["orders", "alice-3"]
        )),
        "ok"
    );
    assert_eq!(
        client(
            "kafka-python",
            a,
            ADMIN,
            "delete-acls",
            &["group", "-", "any", "User:bob", "-", "any", "any"]
        ),
        vec!["group * literal User:bob * read allow"]
    );

    // After a restart the ACLs are still there and still enforced.
    broker.stop();
    drop(broker);
    let broker = sasl_broker(dir.path(), &[]);
    let a = broker.addr.as_str();
    assert_eq!(
        client("kafka-python", a, ADMIN, "describe-acls", &everything),
        vec![
            "group alice- prefixed User:alice * read allow",
            "topic logs- prefixed User:bob * all allow",
            "topic orders literal User:alice * read allow",
            "topic orders literal User:alice * write allow",
        ]
    );
    assert_eq!(
        one(client(
            "confluent",
            a,
            BOB,
            "produce",
            &["orders", "bob-after-restart"]
        )),
        "error TOPIC_AUTHORIZATION_FAILED"
    );
    assert_eq!(
        one(client(
            "confluent",
            a,
            ALICE,
            "produce",
            &["orders", "alice-4"]
        )),
        "ok"
    );
}

// ---- The raw protocol (PLAINTEXT, principal User:ANONYMOUS). ----

fn creation(rtype: i8, name: &str, pattern: i8, principal: &str, op: i8, perm: i8) -> AclCreation {
    AclCreation::default()
        .with_resource_type(rtype)
        .with_resource_name(StrBytes::from_string(name.into()))
        .with_resource_pattern_type(pattern)
        .with_principal(StrBytes::from_string(principal.into()))
        .with_host(StrBytes::from_static_str("*"))
        .with_operation(op)
        .with_permission_type(perm)
}

fn create(c: &mut Client, version: i16, creations: Vec<AclCreation>) -> Vec<i16> {
    let r: CreateAclsResponse = c.call(
        ApiKey::CreateAcls,
        version,
        &CreateAclsRequest::default().with_creations(creations),
    );
    r.results.iter().map(|r| r.error_code).collect()
}

fn describe_all(c: &mut Client, version: i16) -> DescribeAclsResponse {
    c.call(
        ApiKey::DescribeAcls,
        version,
        &DescribeAclsRequest::default()
            .with_resource_type_filter(1)
            .with_resource_name_filter(None)
            .with_pattern_type_filter(1)
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_operation(1)
            .with_permission_type(1),
    )
}

fn produce_error(c: &mut Client, topic: &str) -> i16 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let batch = bytes::Bytes::from(ringbroker_protocol::batch::build_batch(0, now_ms, &[b"v"]));
    let req = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch)),
            ])]);
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    r.responses[0].partition_responses[0].error_code
}

const INVALID_REQUEST: i16 = 42;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const SECURITY_DISABLED: i16 = 54;

#[test]
fn acl_apis_follow_kafka_and_allow_everyone_if_no_acl_found() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &["--authorizer", "acl", "--allow-everyone-if-no-acl-found"],
    );
    let a = broker.addr.as_str();
    let mut c = Client::connect(a);
    // No ACL on the cluster yet: everyone (User:ANONYMOUS here) may create ACLs.
    for version in 1..=3 {
        let bad = vec![
            creation(2, "t", 2, "User:x", 4, 3),     // MATCH pattern
            creation(2, "t", 1, "User:x", 4, 3),     // ANY pattern
            creation(1, "t", 3, "User:x", 4, 3),     // ANY resource
            creation(2, "t", 3, "User:x", 1, 3),     // ANY operation
            creation(2, "t", 3, "User:x", 4, 1),     // ANY permission
            creation(2, "t", 3, "", 4, 3),           // empty principal
            creation(4, "other", 3, "User:x", 4, 3), // cluster not named kafka-cluster
            creation(2, "", 3, "User:x", 4, 3),      // empty name
        ];
        let n = bad.len();
        assert_eq!(
            create(&mut c, version, bad),
            vec![INVALID_REQUEST; n],
            "v{version}"
        );
        assert!(
            describe_all(&mut c, version).resources.is_empty(),
            "v{version}"
        );
        let nothing = DeleteAclsFilter::default()
            .with_resource_type_filter(1)
            .with_resource_name_filter(None)
            .with_pattern_type_filter(1)
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_operation(1)
            .with_permission_type(1);
        let r: DeleteAclsResponse = c.call(
            ApiKey::DeleteAcls,
            version,
            &DeleteAclsRequest::default().with_filters(vec![nothing]),
        );
        assert_eq!(r.filter_results[0].error_code, 0, "v{version}");
        assert!(r.filter_results[0].matching_acls.is_empty(), "v{version}");
    }
    // Anonymous produces to a topic no ACL names (allow-everyone), kcat too.
    common::kcat_produce(a, "open", "k\tv\n");
    assert_eq!(produce_error(&mut c, "open"), 0);
    // One entry for someone else on the topic: no longer "no ACL found".
    assert_eq!(
        create(&mut c, 3, vec![creation(2, "open", 3, "User:x", 4, 3)]),
        vec![0]
    );
    assert_eq!(produce_error(&mut c, "open"), TOPIC_AUTHORIZATION_FAILED);
    // The same entry twice is kept once; the listing groups by resource pattern.
    assert_eq!(
        create(
            &mut c,
            2,
            vec![
                creation(2, "open", 3, "User:x", 4, 3),
                creation(2, "open", 4, "User:y", 3, 2)
            ]
        ),
        vec![0, 0]
    );
    let listed = describe_all(&mut c, 1);
    assert_eq!(listed.error_code, 0);
    let summary: Vec<(i8, String, i8, usize)> = listed
        .resources
        .iter()
        .map(|r| {
            (
                r.resource_type,
                r.resource_name.to_string(),
                r.pattern_type,
                r.acls.len(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![(2, "open".into(), 3, 1), (2, "open".into(), 4, 1)]
    );
    // DeleteAcls: an invalid filter is refused alone; MATCH removes what applies to a name.
    let filter = |name: Option<&str>, pattern: i8| {
        DeleteAclsFilter::default()
            .with_resource_type_filter(2)
            .with_resource_name_filter(name.map(|n| StrBytes::from_string(n.into())))
            .with_pattern_type_filter(pattern)
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_operation(1)
            .with_permission_type(1)
    };
    let r: DeleteAclsResponse = c.call(
        ApiKey::DeleteAcls,
        3,
        &DeleteAclsRequest::default()
            .with_filters(vec![filter(Some("open"), 9), filter(Some("opening"), 2)]),
    );
    assert_eq!(r.filter_results[0].error_code, INVALID_REQUEST);
    assert_eq!(r.filter_results[1].error_code, 0);
    let matched: Vec<(String, i8)> = r.filter_results[1]
        .matching_acls
        .iter()
        .map(|m| (m.resource_name.to_string(), m.pattern_type))
        .collect();
    assert_eq!(matched, vec![("open".to_string(), 4)]);
    assert_eq!(describe_all(&mut c, 3).resources.len(), 1);

    // Once the cluster has an ACL (for someone else), anonymous may no longer manage ACLs.
    assert_eq!(
        create(
            &mut c,
            3,
            vec![creation(4, "kafka-cluster", 3, "User:admin", 2, 3)]
        ),
        vec![0]
    );
    assert_eq!(
        create(&mut c, 3, vec![creation(2, "t", 3, "User:x", 4, 3)]),
        vec![CLUSTER_AUTHORIZATION_FAILED]
    );
    assert_eq!(
        describe_all(&mut c, 3).error_code,
        CLUSTER_AUTHORIZATION_FAILED
    );

    // A refused admin request changes nothing: "open" has an entry (for User:x).
    let deleted: DeleteTopicsResponse = c.call(
        ApiKey::DeleteTopics,
        6,
        &DeleteTopicsRequest::default()
            .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("open"))))])
            .with_timeout_ms(5000),
    );
    assert_eq!(deleted.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    assert!(
        broker.data_dir.join("open-0").exists(),
        "a refused delete removed the topic"
    );
    // No entry names "fresh": allow-everyone lets anonymous create it (CREATE on the topic),
    // though the cluster resource now has ACLs (for User:admin only).
    let created: CreateTopicsResponse = c.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("fresh")))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]),
    );
    assert_eq!(created.topics[0].error_code, 0);
}

#[test]
fn without_the_authorizer_acl_apis_answer_security_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let a = broker.addr.as_str();
    let mut c = Client::connect(a);
    assert_eq!(
        create(&mut c, 3, vec![creation(2, "t", 3, "User:x", 4, 3)]),
        vec![SECURITY_DISABLED]
    );
    assert_eq!(describe_all(&mut c, 2).error_code, SECURITY_DISABLED);
    let binding = acl("topic", "t", "literal", "User:x", "write", "allow");
    assert_eq!(
        one(client("confluent", a, ("-", "-"), "create-acl", &binding)),
        "error SECURITY_DISABLED"
    );
    assert_eq!(
        one(client(
            "kafka-python",
            a,
            ("-", "-"),
            "create-acl",
            &binding
        )),
        "error SECURITY_DISABLED"
    );
    // Everything else works as without any of this.
    common::kcat_produce(a, "t", "k\tv\n");
    assert_eq!(produce_error(&mut c, "t"), 0);
}

#[test]
fn cluster_acl_created_through_one_broker_is_enforced_by_the_others() {
    let cluster = Cluster::start_with(
        3,
        &["--authorizer", "acl", "--allow-everyone-if-no-acl-found"],
    );
    let b1 = cluster.addr(1);
    let topic = "guarded";
    // Auto-created (replicated over the three) while no ACL names it; its leader takes a write.
    let m = common::cluster::wait_metadata(&b1, Some(&[topic]), Duration::from_secs(60), |m| {
        m.topics[0].error_code == 0
            && m.topics[0]
                .partitions
                .first()
                .is_some_and(|p| p.leader_id.0 > 0)
    });
    let leader = cluster.addr(m.topics[0].partitions[0].leader_id.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while produce_error(&mut Client::connect(&leader), topic) != 0 {
        assert!(Instant::now() < deadline, "the topic never took writes");
        std::thread::sleep(Duration::from_millis(200));
    }
    // An entry for someone else, created through broker 1.
    let mut c1 = Client::connect(&b1);
    assert_eq!(
        create(&mut c1, 3, vec![creation(2, topic, 3, "User:x", 4, 3)]),
        vec![0]
    );
    // Brokers 2 and 3 know it and enforce it (anonymous may not write or describe it).
    for id in [2, 3] {
        let addr = cluster.addr(id);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut c = Client::connect(&addr);
            let listed = describe_all(&mut c, 3);
            if listed.resources.len() == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker {id} never learnt the ACL"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut c = Client::connect(&addr);
        assert_eq!(
            produce_error(&mut c, topic),
            TOPIC_AUTHORIZATION_FAILED,
            "broker {id}"
        );
        let m = common::cluster::metadata(&addr, None);
        assert!(
            m.topics
                .iter()
                .all(|t| t.name.as_ref().map(|n| n.as_str()) != Some(topic)),
            "broker {id} lists an undescribable topic"
        );
    }
}
