//! Group semantics with Kafka's exact error codes: the classic-group OffsetCommit rule, exact
//! session timeouts, `--group-max-size`, OffsetDelete; over raw requests (kafka-protocol's
//! client side) and with kafka-python.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::time::{Duration, Instant};

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;
const GROUP_MAX_SIZE_REACHED: i16 = 81;
const FENCED_INSTANCE_ID: i16 = 82;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Consumer-protocol subscription metadata (version 0) naming `topics`.
fn subscription(topics: &[&str]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(topics.len() as i32);
    for t in topics {
        b.put_i16(t.len() as i16);
        b.put_slice(t.as_bytes());
    }
    b.put_i32(-1); // user data: null
    b.freeze()
}

fn join_request(
    group: &str,
    member: &str,
    instance: Option<&str>,
    session_ms: i32,
    topics: &[&str],
) -> JoinGroupRequest {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(session_ms)
        .with_rebalance_timeout_ms(session_ms.max(10_000))
        .with_member_id(s(member))
        .with_group_instance_id(instance.map(s))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(subscription(topics))])
}

fn join(
    c: &mut Client,
    group: &str,
    member: &str,
    instance: Option<&str>,
    session_ms: i32,
) -> JoinGroupResponse {
    c.call(
        ApiKey::JoinGroup,
        7,
        &join_request(group, member, instance, session_ms, &["t"]),
    )
}

/// A new dynamic member: MEMBER_ID_REQUIRED, then the join with its id (answered once the
/// group's rebalance completes).
fn join_new(c: &mut Client, group: &str, session_ms: i32) -> JoinGroupResponse {
    let first = join(c, group, "", None, session_ms);
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    join(c, group, &first.member_id, None, session_ms)
}

fn sync(c: &mut Client, group: &str, generation: i32, member: &str) -> SyncGroupResponse {
    c.call(
        ApiKey::SyncGroup,
        5,
        &SyncGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range"))),
    )
}

fn commit(
    c: &mut Client,
    group: &str,
    generation: i32,
    member: &str,
    instance: Option<&str>,
    topic: &str,
    offset: i64,
) -> i16 {
    use kafka_protocol::messages::offset_commit_request::*;
    let r: OffsetCommitResponse = c.call(
        ApiKey::OffsetCommit,
        8,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)])]),
    );
    r.topics[0].partitions[0].error_code
}

fn heartbeat(c: &mut Client, group: &str, generation: i32, member: &str) -> i16 {
    let r: HeartbeatResponse = c.call(
        ApiKey::Heartbeat,
        4,
        &HeartbeatRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member)),
    );
    r.error_code
}

fn delete_group(c: &mut Client, group: &str) -> i16 {
    let r: DeleteGroupsResponse = c.call(
        ApiKey::DeleteGroups,
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]),
    );
    r.results[0].error_code
}

/// Committed offset of (topic, partition) for `group`, -1 when none.
fn committed(c: &mut Client, group: &str, topic: &str, partition: i32) -> i64 {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let r: OffsetFetchResponse = c.call(
        ApiKey::OffsetFetch,
        7,
        &OffsetFetchRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partition_indexes(vec![partition])])),
    );
    r.topics[0].partitions[0].committed_offset
}

/// OffsetDelete of `partitions`: (group error, per-partition errors in request order).
fn offset_delete(c: &mut Client, group: &str, partitions: &[(&str, i32)]) -> (i16, Vec<i16>) {
    use kafka_protocol::messages::offset_delete_request::*;
    let mut topics: Vec<OffsetDeleteRequestTopic> = Vec::new();
    for (t, p) in partitions {
        let part = OffsetDeleteRequestPartition::default().with_partition_index(*p);
        match topics.iter_mut().find(|x| &*x.name.0 == *t) {
            Some(x) => x.partitions.push(part),
            None => topics.push(
                OffsetDeleteRequestTopic::default()
                    .with_name(TopicName(s(t)))
                    .with_partitions(vec![part]),
            ),
        }
    }
    let r: OffsetDeleteResponse = c.call(
        ApiKey::OffsetDelete,
        0,
        &OffsetDeleteRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(topics),
    );
    let codes = r
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect();
    (r.error_code, codes)
}

fn create_topic(addr: &str, topic: &str, partitions: &str) {
    kafka_python(&["create", addr, topic, partitions], "");
}

#[test]
fn offset_commit_follows_kafkas_classic_group_rule() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "t", "1");
    let mut a = Client::connect(&broker.addr);
    let mut b = Client::connect(&broker.addr);

    // A group this coordinator does not know: a simple commit creates it, a member's gets
    // ILLEGAL_GENERATION (what Kafka answers up to OffsetCommit v8).
    assert_eq!(
        commit(&mut a, "nobody", 3, "m", None, "t", 1),
        ILLEGAL_GENERATION
    );
    assert_eq!(commit(&mut a, "simple", -1, "", None, "t", 1), NONE);

    // A static member (group.instance.id "s1") forms group "g": generation 1, Stable.
    let ja = join(&mut a, "g", "", Some("s1"), 30_000);
    assert_eq!(ja.error_code, NONE);
    let (gen1, ma) = (ja.generation_id, ja.member_id.to_string());
    assert_eq!(sync(&mut a, "g", gen1, &ma).error_code, NONE);
    assert_eq!(commit(&mut a, "g", gen1, &ma, Some("s1"), "t", 5), NONE);
    assert_eq!(commit(&mut a, "g", gen1, &ma, None, "t", 5), NONE);
    // Admin/simple commits (generation -1, no member) while the group has members.
    assert_eq!(commit(&mut a, "g", -1, "", None, "t", 9), UNKNOWN_MEMBER_ID);
    assert_eq!(
        commit(&mut a, "g", gen1, "stranger", None, "t", 9),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        commit(&mut a, "g", gen1 - 1, &ma, None, "t", 9),
        ILLEGAL_GENERATION
    );
    // Static members: the instance id must be held by the member id given.
    assert_eq!(
        commit(&mut a, "g", gen1, "stranger", Some("s1"), "t", 9),
        FENCED_INSTANCE_ID
    );
    assert_eq!(
        commit(&mut a, "g", gen1, &ma, Some("s2"), "t", 9),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        committed(&mut a, "g", "t", 0),
        5,
        "no refused commit was stored"
    );

    // A second member joins: the group prepares a rebalance while it waits for the first to
    // rejoin. A commit of the current generation is accepted meanwhile (Kafka's rule).
    let first_b = join(&mut b, "g", "", None, 30_000);
    assert_eq!(first_b.error_code, MEMBER_ID_REQUIRED);
    let (cid, frame) = b.frame(
        ApiKey::JoinGroup,
        7,
        &join_request("g", &first_b.member_id, None, 30_000, &["t"]),
    );
    b.send(&frame);
    let deadline = Instant::now() + Duration::from_secs(10);
    while heartbeat(&mut a, "g", gen1, &ma) != REBALANCE_IN_PROGRESS {
        assert!(
            Instant::now() < deadline,
            "the group never started rebalancing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        commit(&mut a, "g", gen1, &ma, Some("s1"), "t", 6),
        NONE,
        "a commit of the current generation while the group prepares a rebalance"
    );
    assert_eq!(committed(&mut a, "g", "t", 0), 6);

    // The first member rejoins: generation 2, CompletingRebalance until the leader syncs.
    let ra = join(&mut a, "g", &ma, Some("s1"), 30_000);
    assert_eq!(ra.error_code, NONE);
    let rb: JoinGroupResponse = b.read(ApiKey::JoinGroup, 7, cid);
    assert_eq!(rb.error_code, NONE);
    let gen2 = ra.generation_id;
    assert_eq!(gen2, gen1 + 1);
    assert_eq!(
        commit(&mut a, "g", gen2, &ma, None, "t", 7),
        REBALANCE_IN_PROGRESS,
        "while the group completes its rebalance"
    );
    assert_eq!(
        commit(&mut a, "g", gen1, &ma, None, "t", 7),
        ILLEGAL_GENERATION
    );
    let leader = ra.leader.to_string();
    let (lc, other, other_id) = if leader == ma {
        (&mut a, &mut b, rb.member_id.to_string())
    } else {
        (&mut b, &mut a, ma.clone())
    };
    let (sid, sframe) = other.frame(
        ApiKey::SyncGroup,
        5,
        &SyncGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id(gen2)
            .with_member_id(s(&other_id))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range"))),
    );
    other.send(&sframe);
    assert_eq!(sync(lc, "g", gen2, &leader).error_code, NONE);
    let synced: SyncGroupResponse = other.read(ApiKey::SyncGroup, 5, sid);
    assert_eq!(synced.error_code, NONE);
    assert_eq!(commit(&mut a, "g", gen2, &ma, None, "t", 8), NONE, "Stable");

    // Both leave: the group is Empty and takes simple commits again.
    let leave: LeaveGroupResponse = a.call(
        ApiKey::LeaveGroup,
        5,
        &LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_members(vec![
                leave_group_request::MemberIdentity::default()
                    .with_member_id(s(&ma))
                    .with_group_instance_id(Some(s("s1"))),
                leave_group_request::MemberIdentity::default().with_member_id(s(&rb.member_id)),
            ]),
    );
    assert!(leave.members.iter().all(|m| m.error_code == NONE));
    assert_eq!(
        commit(&mut a, "g", gen2, &ma, None, "t", 9),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(commit(&mut a, "g", -1, "", None, "t", 10), NONE);
    assert_eq!(committed(&mut a, "g", "t", 0), 10);
}

/// A member that stops heartbeating is removed when its session ends: a DeleteGroups sent
/// just after finds the group empty, one sent before finds it not empty.
#[test]
fn a_silent_member_is_removed_exactly_when_its_session_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "t", "1");
    let mut c = Client::connect(&broker.addr);
    for round in 0..5 {
        let group = format!("silent-{round}");
        let joined = join_new(&mut c, &group, 1000);
        assert_eq!(joined.error_code, NONE);
        assert_eq!(
            sync(&mut c, &group, joined.generation_id, &joined.member_id).error_code,
            NONE
        );
        // The session started at the latest now (the join completed before the sync).
        let started = Instant::now();
        assert_eq!(
            commit(&mut c, &group, -1, "", None, "t", 1),
            UNKNOWN_MEMBER_ID
        );
        std::thread::sleep(Duration::from_millis(800).saturating_sub(started.elapsed()));
        assert_eq!(
            delete_group(&mut c, &group),
            NON_EMPTY_GROUP,
            "round {round}: removed before its session ended"
        );
        std::thread::sleep(Duration::from_millis(1040).saturating_sub(started.elapsed()));
        assert_eq!(
            delete_group(&mut c, &group),
            NONE,
            "round {round}: still a member {:?} after the session started",
            started.elapsed()
        );
    }
}

/// `--group-max-size 2` with Kafka's rule: while a rebalance is prepared, the members that
/// rejoined count; the member over the limit (here the old member rejoining last) gets
/// GROUP_MAX_SIZE_REACHED and leaves the group; after it, every member counts.
#[test]
fn group_max_size_refuses_the_member_over_it_as_kafka_does() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--group-max-size", "2"]);
    create_topic(&broker.addr, "t", "1");
    let mut c1 = Client::connect(&broker.addr);
    let mut c2 = Client::connect(&broker.addr);
    let mut c3 = Client::connect(&broker.addr);
    let j1 = join_new(&mut c1, "capped", 30_000);
    assert_eq!(j1.error_code, NONE);
    let m1 = j1.member_id.to_string();
    assert_eq!(
        sync(&mut c1, "capped", j1.generation_id, &m1).error_code,
        NONE
    );
    // Two more join (Stable: one member, room for one; then the rebalance counts joiners).
    let mut pending = Vec::new();
    for c in [&mut c2, &mut c3] {
        let first = join(c, "capped", "", None, 30_000);
        assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
        let (cid, frame) = c.frame(
            ApiKey::JoinGroup,
            7,
            &join_request("capped", &first.member_id, None, 30_000, &["t"]),
        );
        c.send(&frame);
        pending.push(cid);
        std::thread::sleep(Duration::from_millis(200));
    }
    // The first member rejoins last: two members already wait, so it is over the limit.
    let late = join(&mut c1, "capped", &m1, None, 30_000);
    assert_eq!(late.error_code, GROUP_MAX_SIZE_REACHED);
    let r2: JoinGroupResponse = c2.read(ApiKey::JoinGroup, 7, pending[0]);
    let r3: JoinGroupResponse = c3.read(ApiKey::JoinGroup, 7, pending[1]);
    assert_eq!((r2.error_code, r3.error_code), (NONE, NONE));
    assert_eq!(r2.generation_id, j1.generation_id + 1);
    let leader_members = if r2.leader == r2.member_id {
        &r2.members
    } else {
        &r3.members
    };
    assert_eq!(leader_members.len(), 2, "the group holds the two that fit");
    // A new member now: every member counts, the group is full (refused at its first join).
    assert_eq!(
        join(&mut c1, "capped", "", None, 30_000).error_code,
        GROUP_MAX_SIZE_REACHED
    );
}

#[test]
fn offset_delete_refuses_subscribed_topics_and_deletes_the_rest_durably() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "a", "2");
    create_topic(&broker.addr, "b", "1");
    let mut c = Client::connect(&broker.addr);
    assert_eq!(
        offset_delete(&mut c, "ghost", &[("a", 0)]).0,
        GROUP_ID_NOT_FOUND
    );
    for (t, p) in [("a", 0), ("a", 1), ("b", 0)] {
        use kafka_protocol::messages::offset_commit_request::*;
        let r: OffsetCommitResponse = c.call(
            ApiKey::OffsetCommit,
            8,
            &OffsetCommitRequest::default()
                .with_group_id(GroupId(s("od")))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(t)))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(42)])]),
        );
        assert_eq!(r.topics[0].partitions[0].error_code, NONE);
    }
    // A member subscribed to "a" only.
    let first: JoinGroupResponse = c.call(
        ApiKey::JoinGroup,
        7,
        &join_request("od", "", None, 30_000, &["a"]),
    );
    let joined: JoinGroupResponse = c.call(
        ApiKey::JoinGroup,
        7,
        &join_request("od", &first.member_id, None, 30_000, &["a"]),
    );
    assert_eq!(joined.error_code, NONE);
    assert_eq!(
        sync(&mut c, "od", joined.generation_id, &joined.member_id).error_code,
        NONE
    );
    let (group_error, codes) = offset_delete(&mut c, "od", &[("a", 0), ("b", 0), ("nosuch", 0)]);
    assert_eq!(group_error, NONE);
    assert_eq!(
        codes,
        [GROUP_SUBSCRIBED_TO_TOPIC, NONE, UNKNOWN_TOPIC_OR_PARTITION]
    );
    assert_eq!(committed(&mut c, "od", "a", 0), 42);
    assert_eq!(committed(&mut c, "od", "b", 0), -1);
    // Once the member left (Empty), every topic's offsets may go.
    let leave: LeaveGroupResponse = c.call(
        ApiKey::LeaveGroup,
        5,
        &LeaveGroupRequest::default()
            .with_group_id(GroupId(s("od")))
            .with_members(vec![leave_group_request::MemberIdentity::default()
                .with_member_id(joined.member_id.clone())]),
    );
    assert_eq!(leave.members[0].error_code, NONE);
    assert_eq!(offset_delete(&mut c, "od", &[("a", 0)]), (NONE, vec![NONE]));
    assert_eq!(committed(&mut c, "od", "a", 0), -1);
    assert_eq!(committed(&mut c, "od", "a", 1), 42);
    // Deleted for good: a restart replays the tombstones.
    drop(c);
    assert!(broker.stop().success());
    drop(broker);
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    assert_eq!(committed(&mut c, "od", "a", 0), -1);
    assert_eq!(committed(&mut c, "od", "b", 0), -1);
    assert_eq!(committed(&mut c, "od", "a", 1), 42);
}

/// Two kafka-python consumers of a group close at about the same time: the first commits and
/// leaves (the group starts a rebalance), the second commits its final offsets with the
/// generation the rebalance has not replaced yet. Kafka accepts that commit; refusing it
/// (REBALANCE_IN_PROGRESS) made the second consumer's records be read again after a restart.
#[test]
fn kafka_python_consumers_closing_together_keep_both_final_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    create_topic(&addr, "jobs", "4");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/kafka_python_groups.py"
    );
    let out = run(
        "python3",
        &[script, "close-together", &addr, "jobs", "workers", "400"],
        "",
    );
    let read: Vec<usize> = out
        .lines()
        .find_map(|l| l.strip_prefix("read\t"))
        .expect("a read line")
        .split('\t')
        .map(|n| n.parse().unwrap())
        .collect();
    let log_tail = |broker: &Broker| {
        let log = broker.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    assert_eq!(
        read.iter().sum::<usize>(),
        400,
        "{out}\nbroker log:\n{}",
        log_tail(&broker)
    );
    assert!(read.iter().all(|&n| n > 0), "both consumers read: {out}");
    assert!(
        !out.lines().any(|l| l.starts_with("log\t")),
        "a final commit failed:\n{out}\nbroker log:\n{}",
        log_tail(&broker)
    );
    let committed = run("python3", &[script, "committed", &addr, "workers"], "");
    let total: i64 = committed
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(
        total, 400,
        "every partition's final offset committed:\n{committed}"
    );

    assert!(broker.stop().success());
    drop(broker);
    let broker = Broker::start(dir.path(), &[]);
    let again = run(
        "python3",
        &[script, "read-group", &broker.addr, "jobs", "workers", "4"],
        "",
    );
    assert_eq!(
        again.trim(),
        "read\t0",
        "records read again after the restart"
    );
}

/// KIP-345: a static member restarted under the same `group.instance.id` takes its place
/// under a new member id; the old instance's heartbeats, syncs and commits then get
/// FENCED_INSTANCE_ID (not UNKNOWN_MEMBER_ID), so it stops instead of rejoining.
#[test]
fn a_replaced_static_member_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "t", "1");
    let mut old = Client::connect(&broker.addr);
    let mut new = Client::connect(&broker.addr);
    let first = join(&mut old, "static", "", Some("inst"), 30_000);
    assert_eq!(first.error_code, NONE);
    let old_id = first.member_id.to_string();
    assert_eq!(
        sync(&mut old, "static", first.generation_id, &old_id).error_code,
        NONE
    );
    let again = join(&mut new, "static", "", Some("inst"), 30_000);
    assert_eq!(again.error_code, NONE);
    assert_ne!(&*again.member_id, old_id.as_str());
    let heartbeat: HeartbeatResponse = old.call(
        ApiKey::Heartbeat,
        4,
        &HeartbeatRequest::default()
            .with_group_id(GroupId(s("static")))
            .with_generation_id(again.generation_id)
            .with_member_id(s(&old_id))
            .with_group_instance_id(Some(s("inst"))),
    );
    assert_eq!(heartbeat.error_code, FENCED_INSTANCE_ID);
    let synced: SyncGroupResponse = old.call(
        ApiKey::SyncGroup,
        5,
        &SyncGroupRequest::default()
            .with_group_id(GroupId(s("static")))
            .with_generation_id(again.generation_id)
            .with_member_id(s(&old_id))
            .with_group_instance_id(Some(s("inst")))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range"))),
    );
    assert_eq!(synced.error_code, FENCED_INSTANCE_ID);
    assert_eq!(
        commit(
            &mut old,
            "static",
            again.generation_id,
            &old_id,
            Some("inst"),
            "t",
            1
        ),
        FENCED_INSTANCE_ID
    );
    // The new instance is the member.
    let new_id = again.member_id.to_string();
    assert_eq!(
        sync(&mut new, "static", again.generation_id, &new_id).error_code,
        NONE
    );
    assert_eq!(
        commit(
            &mut new,
            "static",
            again.generation_id,
            &new_id,
            Some("inst"),
            "t",
            1
        ),
        NONE
    );
}
