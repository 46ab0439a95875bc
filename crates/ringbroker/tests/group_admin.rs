//! Group and cluster administration through real admin clients: confluent-kafka's AdminClient
//! (librdkafka) and kafka-python's KafkaAdminClient: alter/list/delete consumer group offsets
//! (refused while the group has a live member), list groups with a states filter, describe
//! groups, topics and the cluster with their authorized operations.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn admin(args: &[&str]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/admin_groups.py"
    );
    let mut full = vec![script];
    full.extend_from_slice(args);
    run("python3", &full, "")
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.is_empty()).collect()
}

#[test]
fn admin_clients_alter_list_and_delete_group_offsets_and_are_refused_while_members_live() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let b = broker.addr.as_str();
    kafka_python(&["create", b, "orders", "2"], "");
    let input: String = (0..40).map(|i| format!("k{i}\tv{i}\n")).collect();
    kcat_produce(b, "orders", &input);

    // Empty group: both clients may set offsets; both read them back.
    assert_eq!(
        lines(&admin(&["ck-alter", b, "app", "orders:0=5,orders:1=7"])),
        ["orders\t0\tNONE", "orders\t1\tNONE"]
    );
    assert_eq!(
        lines(&admin(&["kp-offsets", b, "app"])),
        ["orders\t0\t5", "orders\t1\t7"]
    );
    assert_eq!(
        lines(&admin(&["kp-alter", b, "app", "orders:0=3"])),
        ["orders\t0\tNoError", "done"]
    );
    assert_eq!(
        lines(&admin(&["ck-offsets", b, "app"])),
        ["orders\t0\t3", "orders\t1\t7"]
    );
    assert_eq!(
        lines(&admin(&["ck-list", b, "EMPTY"])),
        ["app\tEMPTY\tCLASSIC"]
    );
    assert!(lines(&admin(&["ck-list", b, "STABLE"])).is_empty());
    assert_eq!(
        lines(&admin(&["kp-list", b])),
        ["app\tconsumer\tEmpty\tclassic"]
    );
    assert_eq!(
        lines(&admin(&["ck-describe", b, "app"])),
        [
            "state\tEMPTY\t",
            "members\t0",
            "operations\tDELETE,DESCRIBE,READ"
        ]
    );

    // A live member (librdkafka consumer subscribed to "orders").
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/admin_groups.py"
    );
    let mut member = Command::new("python3")
        .args([script, "ck-member", b, "orders", "app", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(member.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "assigned");

    assert_eq!(
        lines(&admin(&["ck-alter", b, "app", "orders:0=1"])),
        ["orders\t0\tUNKNOWN_MEMBER_ID"],
        "AlterConsumerGroupOffsets while a member is live"
    );
    assert_eq!(
        lines(&admin(&["kp-alter", b, "app", "orders:0=1"])),
        ["orders\t0\tUnknownMemberIdError", "done"]
    );
    assert_eq!(
        lines(&admin(&["kp-delete", b, "app", "orders:0,orders:1"])),
        [
            "orders\t0\tGroupSubscribedToTopicError",
            "orders\t1\tGroupSubscribedToTopicError",
            "done"
        ]
    );
    assert_eq!(
        lines(&admin(&["ck-list", b, "STABLE"])),
        ["app\tSTABLE\tCLASSIC"]
    );
    assert_eq!(
        lines(&admin(&["kp-describe", b, "app"])),
        [
            "state\tStable",
            "members\t1",
            "operations\tDELETE,DESCRIBE,READ"
        ]
    );
    assert_eq!(
        lines(&admin(&["ck-offsets", b, "app"])),
        ["orders\t0\t3", "orders\t1\t7"],
        "nothing refused was changed"
    );

    // The member leaves: offsets may be deleted.
    let _ = member.kill();
    let _ = member.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = admin(&["kp-delete", b, "app", "orders:0"]);
        if lines(&out) == ["orders\t0\tNoError", "done"] {
            break;
        }
        assert!(Instant::now() < deadline, "the member never left: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(lines(&admin(&["ck-offsets", b, "app"])), ["orders\t1\t7"]);
    assert_eq!(lines(&admin(&["kp-offsets", b, "app"])), ["orders\t1\t7"]);
}

#[test]
fn describe_cluster_topics_and_groups_report_every_operation_kafka_defines() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let b = broker.addr.as_str();
    kafka_python(&["create", b, "events", "3"], "");
    let (host, port) = b.rsplit_once(':').unwrap();
    let cluster = admin(&["ck-cluster", b]);
    let cl = lines(&cluster);
    assert!(cl[0].starts_with("cluster_id\t") && cl[0].len() > "cluster_id\t".len());
    assert_eq!(cl[1], format!("controller\t0\t{host}\t{port}"));
    assert_eq!(cl[2], format!("node\t0\t{host}\t{port}\tNone"));
    assert_eq!(
        cl[3],
        "operations\tALTER,ALTER_CONFIGS,CLUSTER_ACTION,CREATE,DESCRIBE,DESCRIBE_CONFIGS,IDEMPOTENT_WRITE"
    );
    let kp = admin(&["kp-cluster", b]);
    let kp = lines(&kp);
    assert_eq!(kp[0], cl[0], "both clients see one cluster id");
    assert_eq!(
        &kp[1..],
        [
            "controller\t0".to_string(),
            format!("node\t0\t{host}\t{port}")
        ]
    );
    assert_eq!(
        lines(&admin(&["ck-topic", b, "events"])),
        [
            "partitions\t3",
            "operations\tALTER,ALTER_CONFIGS,CREATE,DELETE,DESCRIBE,DESCRIBE_CONFIGS,READ,WRITE"
        ]
    );
}

/// `--group-max-size 1`: a second librdkafka consumer of the group is told
/// GROUP_MAX_SIZE_REACHED; the first keeps its partitions.
#[test]
fn a_librdkafka_consumer_over_group_max_size_gets_group_max_size_reached() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--group-max-size", "1"]);
    let b = broker.addr.as_str();
    kafka_python(&["create", b, "orders", "2"], "");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/admin_groups.py"
    );
    let mut first = Command::new("python3")
        .args([script, "ck-member", b, "orders", "capped", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "assigned");
    assert_eq!(
        lines(&admin(&["ck-join-error", b, "orders", "capped", "15"])),
        ["error\tGROUP_MAX_SIZE_REACHED"]
    );
    assert_eq!(
        lines(&admin(&["kp-describe", b, "capped"])),
        [
            "state\tStable",
            "members\t1",
            "operations\tDELETE,DESCRIBE,READ"
        ]
    );
    let _ = first.kill();
    let _ = first.wait();
}
