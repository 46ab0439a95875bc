//! `ringbroker group list|describe|reset-offsets|delete`.

use super::admin::{str_bytes, topic_name, versions, Admin, KafkaError};
use super::output::{print_fields, print_json, print_section, Format, Table};
use super::topic::{offsets, EARLIEST, LATEST};
use super::Context;
use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Buf;
use clap::{ArgGroup, Subcommand};
use kafka_protocol::messages::{
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    },
    ApiKey, ConsumerProtocolAssignment, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// GROUP_ID_NOT_FOUND: what `group describe` answers for a group the coordinator does not know.
const GROUP_ID_NOT_FOUND: i16 = 69;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List groups (ListGroups, asked of every broker).
    List,
    /// A group's state, members and, per partition, committed offset, log end offset and lag
    /// (DescribeGroups, OffsetFetch, ListOffsets).
    Describe {
        /// Group id.
        name: String,
    },
    /// Set a group's committed offsets for a topic (OffsetCommit as an admin: generation -1,
    /// no member id). The broker refuses while the group has members: stop its consumers first.
    #[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset"])))]
    ResetOffsets {
        /// Group id.
        name: String,
        /// The topic whose offsets to set.
        #[arg(long)]
        topic: String,
        /// Only these partitions (repeatable). [default: all]
        #[arg(short = 'p', long = "partition")]
        partitions: Vec<i32>,
        /// To each partition's log start offset.
        #[arg(long)]
        to_earliest: bool,
        /// To each partition's high watermark (skip everything there now).
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped to the partition's log start offset and high watermark).
        #[arg(long, value_name = "N")]
        to_offset: Option<i64>,
        /// Show the new offsets without committing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete groups (DeleteGroups); only groups without members can be deleted.
    Delete {
        /// Group ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(mut c: Context, command: GroupCommand) -> Result<()> {
    match command {
        GroupCommand::List => list(&mut c).await,
        GroupCommand::Describe { name } => describe(&mut c, &name).await,
        GroupCommand::ResetOffsets {
            name,
            topic,
            partitions,
            to_earliest,
            to_latest,
            to_offset,
            dry_run,
        } => {
            let to = match (to_earliest, to_latest, to_offset) {
                (true, _, _) => Target::Earliest,
                (_, true, _) => Target::Latest,
                (_, _, Some(n)) => Target::Offset(n),
                _ => bail!("give --to-earliest, --to-latest or --to-offset N"),
            };
            reset_offsets(&mut c, &name, &topic, &partitions, to, dry_run).await
        }
        GroupCommand::Delete { names } => delete(&mut c, &names).await,
    }
}

fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_string()))
}

fn error_json(e: &Option<KafkaError>) -> Value {
    e.as_ref().map_or(Value::Null, KafkaError::to_json)
}

async fn list(c: &mut Context) -> Result<()> {
    // Each broker coordinates a share of the groups: ask them all.
    let cluster = c.admin.metadata(Some(&[])).await?;
    let addrs: Vec<String> = cluster.brokers.values().map(|b| b.addr()).collect();
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut with_state = true;
    for addr in addrs {
        let (version, r): (_, ListGroupsResponse) = c
            .admin
            .call_at(&addr, ApiKey::ListGroups, versions::LIST_GROUPS, |_| {
                ListGroupsRequest::default()
            })
            .await?;
        if r.error_code != 0 {
            return Err(
                KafkaError::new(r.error_code, format!("ListGroups at {addr}"), None).into(),
            );
        }
        with_state &= version >= 4;
        for g in r.groups {
            groups.insert(
                g.group_id.0.to_string(),
                (g.protocol_type.to_string(), g.group_state.to_string()),
            );
        }
    }
    match c.format {
        Format::Json => print_json(&json!({
            "groups": groups.iter().map(|(g, (protocol_type, state))| json!({
                "group": g,
                "protocol_type": protocol_type,
                "state": if with_state { Value::from(state.as_str()) } else { Value::Null },
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let mut t = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
            for (g, (protocol_type, state)) in &groups {
                let state = if with_state {
                    state.clone()
                } else {
                    "-".to_string()
                };
                t.row(vec![g.clone(), state, protocol_type.clone()]);
            }
            t.print();
        }
    }
    Ok(())
}

struct Member {
    member_id: String,
    client_id: String,
    client_host: String,
    /// (topic, partition) assigned, when the group uses the consumer protocol.
    assigned: Vec<(String, i32)>,
}

/// One partition of `group describe`.
struct OffsetRow<'a> {
    topic: String,
    partition: i32,
    committed: Option<i64>,
    end: Option<i64>,
    lag: Option<i64>,
    member: Option<&'a Member>,
}

struct GroupDescription {
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<Member>,
}

async fn describe_group(
    admin: &mut Admin,
    coordinator: &str,
    name: &str,
) -> Result<GroupDescription> {
    let (_, r): (_, DescribeGroupsResponse) = admin
        .call_at(
            coordinator,
            ApiKey::DescribeGroups,
            versions::DESCRIBE_GROUPS,
            |_| DescribeGroupsRequest::default().with_groups(vec![group_id(name)]),
        )
        .await?;
    let g = r
        .groups
        .iter()
        .find(|g| g.group_id.0.as_str() == name)
        .with_context(|| format!("DescribeGroups answer does not mention {name:?}"))?;
    if g.error_code != 0 {
        return Err(KafkaError::new(
            g.error_code,
            format!("group {name:?}"),
            g.error_message.as_ref(),
        )
        .into());
    }
    let members = g
        .members
        .iter()
        .map(|m| Member {
            member_id: m.member_id.to_string(),
            client_id: m.client_id.to_string(),
            client_host: m.client_host.to_string(),
            assigned: if g.protocol_type.as_str() == "consumer" {
                consumer_assignment(&m.member_assignment)
            } else {
                Vec::new()
            },
        })
        .collect();
    Ok(GroupDescription {
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
    })
}

/// The partitions of a consumer-protocol assignment (empty when it does not decode).
fn consumer_assignment(bytes: &bytes::Bytes) -> Vec<(String, i32)> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    // The assignment carries its own version first; newer ones decode as the newest known.
    let version = buf.get_i16().clamp(0, 3);
    match ConsumerProtocolAssignment::decode(&mut buf, version) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|&p| (tp.topic.0.to_string(), p)))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The group's committed offsets: (topic, partition) → offset (-1: none). `topics`: `None`
/// asks for every topic the group has offsets for.
async fn committed_offsets(
    admin: &mut Admin,
    coordinator: &str,
    name: &str,
    topics: Option<&[(String, Vec<i32>)]>,
) -> Result<BTreeMap<(String, i32), i64>> {
    let (version, r): (_, OffsetFetchResponse) = admin
        .call_at(
            coordinator,
            ApiKey::OffsetFetch,
            versions::OFFSET_FETCH,
            |v| {
                if v >= 8 {
                    OffsetFetchRequest::default().with_groups(vec![
                        OffsetFetchRequestGroup::default()
                            .with_group_id(group_id(name))
                            .with_topics(topics.map(|ts| {
                                ts.iter()
                                    .map(|(t, ps)| {
                                        OffsetFetchRequestTopics::default()
                                            .with_name(topic_name(t))
                                            .with_partition_indexes(ps.clone())
                                    })
                                    .collect()
                            })),
                    ])
                } else {
                    OffsetFetchRequest::default()
                        .with_group_id(group_id(name))
                        .with_topics(topics.map(|ts| {
                            ts.iter()
                                .map(|(t, ps)| {
                                    OffsetFetchRequestTopic::default()
                                        .with_name(topic_name(t))
                                        .with_partition_indexes(ps.clone())
                                })
                                .collect()
                        }))
                }
            },
        )
        .await?;
    let what = || format!("committed offsets of group {name:?}");
    let mut out = BTreeMap::new();
    let mut record = |topic: &str, p: i32, offset: i64, code: i16| -> Result<()> {
        if code != 0 {
            return Err(KafkaError::new(code, format!("{} ({topic}-{p})", what()), None).into());
        }
        out.insert((topic.to_string(), p), offset);
        Ok(())
    };
    if version >= 8 {
        let g = r
            .groups
            .iter()
            .find(|g| g.group_id.0.as_str() == name)
            .with_context(|| format!("OffsetFetch answer does not mention {name:?}"))?;
        if g.error_code != 0 {
            return Err(KafkaError::new(g.error_code, what(), None).into());
        }
        for t in &g.topics {
            for p in &t.partitions {
                record(
                    t.name.0.as_str(),
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                )?;
            }
        }
    } else {
        if r.error_code != 0 {
            return Err(KafkaError::new(r.error_code, what(), None).into());
        }
        for t in &r.topics {
            for p in &t.partitions {
                record(
                    t.name.0.as_str(),
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                )?;
            }
        }
    }
    Ok(out)
}

/// High watermarks of the given partitions, by topic (a topic that is gone: none).
async fn log_end_offsets(
    admin: &mut Admin,
    partitions: &BTreeSet<(String, i32)>,
) -> Result<BTreeMap<(String, i32), i64>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions {
        by_topic.entry(t).or_default().push(*p);
    }
    let topics: Vec<String> = by_topic.keys().map(|t| t.to_string()).collect();
    let mut out = BTreeMap::new();
    if topics.is_empty() {
        return Ok(out);
    }
    let cluster = admin.metadata(Some(&topics)).await?;
    for (topic, ps) in by_topic {
        if cluster.topic(topic).is_err() {
            continue;
        }
        for (p, r) in offsets(admin, &cluster, topic, &ps, LATEST).await? {
            if let Ok(o) = r {
                out.insert((topic.to_string(), p), o);
            }
        }
    }
    Ok(out)
}

async fn describe(c: &mut Context, name: &str) -> Result<()> {
    let coordinator = c.admin.coordinator_addr(name).await?;
    let g = describe_group(&mut c.admin, &coordinator, name).await?;
    let committed = committed_offsets(&mut c.admin, &coordinator, name, None).await?;
    if g.state == "Dead" && committed.is_empty() {
        return Err(KafkaError::new(
            GROUP_ID_NOT_FOUND,
            format!("group {name:?} does not exist"),
            None,
        )
        .into());
    }
    // Every partition that has an offset or an owner.
    let mut owner: BTreeMap<(String, i32), &Member> = BTreeMap::new();
    for m in &g.members {
        for tp in &m.assigned {
            owner.insert(tp.clone(), m);
        }
    }
    let partitions: BTreeSet<(String, i32)> = committed
        .iter()
        .filter(|(_, &o)| o >= 0)
        .map(|(k, _)| k.clone())
        .chain(owner.keys().cloned())
        .collect();
    let ends = log_end_offsets(&mut c.admin, &partitions).await?;
    let rows: Vec<OffsetRow> = partitions
        .iter()
        .map(|(t, p)| {
            let key = (t.clone(), *p);
            let committed = committed.get(&key).copied().filter(|&o| o >= 0);
            let end = ends.get(&key).copied();
            let lag = match (committed, end) {
                (Some(c), Some(e)) => Some((e - c).max(0)),
                // No committed offset: where the group starts depends on each consumer's
                // auto.offset.reset, so there is no lag to tell.
                _ => None,
            };
            OffsetRow {
                topic: t.clone(),
                partition: *p,
                committed,
                end,
                lag,
                member: owner.get(&key).copied(),
            }
        })
        .collect();
    let total_lag: i64 = rows.iter().filter_map(|r| r.lag).sum();
    print_description(c.format, name, &coordinator, &g, &rows, total_lag);
    Ok(())
}

/// `group describe`'s output.
fn print_description(
    format: Format,
    name: &str,
    coordinator: &str,
    g: &GroupDescription,
    rows: &[OffsetRow<'_>],
    total_lag: i64,
) {
    match format {
        Format::Json => print_json(&json!({
            "group": name,
            "coordinator": coordinator,
            "state": g.state,
            "protocol_type": g.protocol_type,
            "protocol": g.protocol,
            "members": g.members.iter().map(|m| json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "assignments": m.assigned.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "total_lag": total_lag,
            "offsets": rows.iter().map(|r| json!({
                "topic": r.topic,
                "partition": r.partition,
                "committed_offset": r.committed,
                "log_end_offset": r.end,
                "lag": r.lag,
                "member_id": r.member.map(|m| m.member_id.clone()),
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            print_fields(&[
                ("GROUP", name.to_string()),
                ("COORDINATOR", coordinator.to_string()),
                ("STATE", g.state.clone()),
                ("PROTOCOL-TYPE", g.protocol_type.clone()),
                ("PROTOCOL", g.protocol.clone()),
                ("MEMBERS", g.members.len().to_string()),
                ("TOTAL-LAG", total_lag.to_string()),
            ]);
            super::output::emit("\n");
            print_section("OFFSETS");
            let mut t = Table::new(&[
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "MEMBER-ID",
                "CLIENT-ID",
                "HOST",
            ]);
            let show = |o: &Option<i64>| o.map_or_else(|| "-".to_string(), |o| o.to_string());
            for r in rows {
                let m = r.member;
                t.row(vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    show(&r.committed),
                    show(&r.end),
                    show(&r.lag),
                    m.map_or_else(|| "-".to_string(), |m| m.member_id.clone()),
                    m.map_or_else(|| "-".to_string(), |m| m.client_id.clone()),
                    m.map_or_else(|| "-".to_string(), |m| m.client_host.clone()),
                ]);
            }
            t.print();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Earliest,
    Latest,
    Offset(i64),
}

async fn reset_offsets(
    c: &mut Context,
    name: &str,
    topic: &str,
    only: &[i32],
    to: Target,
    dry_run: bool,
) -> Result<()> {
    let cluster = c.admin.metadata(Some(&[topic.to_string()])).await?;
    let info = cluster.topic(topic)?;
    let partitions: Vec<i32> = if only.is_empty() {
        info.partitions.iter().map(|p| p.partition).collect()
    } else {
        for p in only {
            if !info.partitions.iter().any(|x| x.partition == *p) {
                return Err(KafkaError::new(3, format!("partition {topic}-{p}"), None).into());
            }
        }
        only.to_vec()
    };
    let earliest = offsets(&mut c.admin, &cluster, topic, &partitions, EARLIEST).await?;
    let latest = offsets(&mut c.admin, &cluster, topic, &partitions, LATEST).await?;
    let coordinator = c.admin.coordinator_addr(name).await?;
    let asked = [(topic.to_string(), partitions.clone())];
    let before = committed_offsets(&mut c.admin, &coordinator, name, Some(&asked)).await?;
    let mut plan: Vec<(i32, Option<i64>, i64)> = Vec::new();
    for &p in &partitions {
        let start = earliest[&p].clone().map_err(anyhow::Error::new)?;
        let end = latest[&p].clone().map_err(anyhow::Error::new)?;
        let new = match to {
            Target::Earliest => start,
            Target::Latest => end,
            Target::Offset(n) => n.clamp(start, end.max(start)),
        };
        let old = before
            .get(&(topic.to_string(), p))
            .copied()
            .filter(|&o| o >= 0);
        plan.push((p, old, new));
    }
    let errors = if dry_run {
        BTreeMap::new()
    } else {
        commit_offsets(&mut c.admin, &coordinator, name, topic, &plan).await?
    };
    match c.format {
        Format::Json => print_json(&json!({
            "group": name,
            "topic": topic,
            "dry_run": dry_run,
            "partitions": plan.iter().map(|(p, old, new)| json!({
                "partition": p,
                "previous_offset": old,
                "new_offset": new,
                "error": error_json(&errors.get(p).cloned()),
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let mut t = Table::new(&["TOPIC", "PARTITION", "PRIOR-OFFSET", "NEW-OFFSET", "STATUS"]);
            for (p, old, new) in &plan {
                let s = match (errors.get(p), dry_run) {
                    (Some(e), _) => e.name(),
                    (None, true) => "dry run: not committed".to_string(),
                    (None, false) => "OK".to_string(),
                };
                t.row(vec![
                    topic.to_string(),
                    p.to_string(),
                    old.map_or_else(|| "-".to_string(), |o| o.to_string()),
                    new.to_string(),
                    s,
                ]);
            }
            t.print();
        }
    }
    match errors.values().next() {
        None => Ok(()),
        Some(e) if errors.len() == 1 => Err(anyhow!(e.clone())),
        Some(e) => bail!(
            "{} of {} partitions failed; first: {e}",
            errors.len(),
            plan.len()
        ),
    }
}

/// Commits `plan` (partition, previous, new) as an admin (generation -1, no member id):
/// the partitions the broker refused, with its error.
async fn commit_offsets(
    admin: &mut Admin,
    coordinator: &str,
    name: &str,
    topic: &str,
    plan: &[(i32, Option<i64>, i64)],
) -> Result<BTreeMap<i32, KafkaError>> {
    let (_, r): (_, OffsetCommitResponse) = admin
        .call_at(
            coordinator,
            ApiKey::OffsetCommit,
            versions::OFFSET_COMMIT,
            |_| {
                OffsetCommitRequest::default()
                    .with_group_id(group_id(name))
                    .with_generation_id_or_member_epoch(-1)
                    .with_member_id(str_bytes(""))
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(topic_name(topic))
                        .with_partitions(
                            plan.iter()
                                .map(|&(p, _, new)| {
                                    OffsetCommitRequestPartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(new)
                                })
                                .collect(),
                        )])
            },
        )
        .await?;
    let mut errors = BTreeMap::new();
    for p in r.topics.iter().flat_map(|t| t.partitions.iter()) {
        if p.error_code != 0 {
            let mut what = format!(
                "committing offsets of group {name:?} ({topic}-{})",
                p.partition_index
            );
            // UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION / REBALANCE_IN_PROGRESS: the broker
            // refuses an admin commit while the group has members.
            if matches!(p.error_code, 22 | 25 | 27) {
                what.push_str(": the group has active members; stop its consumers, then reset");
            }
            errors.insert(p.partition_index, KafkaError::new(p.error_code, what, None));
        }
    }
    for &(p, _, _) in plan {
        if !r
            .topics
            .iter()
            .any(|t| t.partitions.iter().any(|x| x.partition_index == p))
        {
            errors.insert(
                p,
                KafkaError::new(
                    -1,
                    format!("OffsetCommit answer does not mention {topic}-{p}"),
                    None,
                ),
            );
        }
    }
    Ok(errors)
}

async fn delete(c: &mut Context, names: &[String]) -> Result<()> {
    let mut results: Vec<(String, Option<KafkaError>)> = Vec::new();
    for name in names {
        let coordinator = match c.admin.coordinator_addr(name).await {
            Ok(a) => a,
            Err(e) => match e.downcast::<KafkaError>() {
                Ok(k) => {
                    results.push((name.clone(), Some(k)));
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let (_, r): (_, DeleteGroupsResponse) = c
            .admin
            .call_at(
                &coordinator,
                ApiKey::DeleteGroups,
                versions::DELETE_GROUPS,
                |_| DeleteGroupsRequest::default().with_groups_names(vec![group_id(name)]),
            )
            .await?;
        let res = r
            .results
            .iter()
            .find(|g| g.group_id.0.as_str() == name)
            .with_context(|| format!("DeleteGroups answer does not mention {name:?}"))?;
        let error = (res.error_code != 0)
            .then(|| KafkaError::new(res.error_code, format!("group {name:?}"), None));
        results.push((name.clone(), error));
    }
    match c.format {
        Format::Json => print_json(&json!({
            "groups": results.iter().map(|(g, e)| json!({"group": g, "error": error_json(e)})).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let mut t = Table::new(&["GROUP", "STATUS"]);
            for (g, e) in &results {
                t.row(vec![
                    g.clone(),
                    e.as_ref()
                        .map_or_else(|| "OK".to_string(), ToString::to_string),
                ]);
            }
            t.print();
        }
    }
    let failed: Vec<&KafkaError> = results.iter().filter_map(|r| r.1.as_ref()).collect();
    match failed.as_slice() {
        [] => Ok(()),
        [one] => Err(anyhow!((*one).clone())),
        many => bail!(
            "{} of {} failed; first: {}",
            many.len(),
            results.len(),
            many[0]
        ),
    }
}
