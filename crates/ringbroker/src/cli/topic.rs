//! `ringbroker topic create|list|describe|alter-config|add-partitions|delete|trim|reassign|
//! reassignments`.

use super::admin::{check, str_bytes, topic_name, versions, Admin, ClusterInfo, KafkaError};
use super::output::{ids, print_fields, print_json, print_section, Format, Table};
use super::Context;
use anyhow::{anyhow, bail, Context as _, Result};
use clap::Subcommand;
use kafka_protocol::messages::{
    alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic},
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use kafka_protocol::messages::{
    create_partitions_request::CreatePartitionsTopic,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic},
    delete_topics_request::DeleteTopicState,
    describe_configs_request::DescribeConfigsResource,
    incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    ApiKey, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ListOffsetsRequest,
    ListOffsetsResponse,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// DescribeConfigs / IncrementalAlterConfigs resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// ListOffsets timestamps.
pub use crate::client::{EARLIEST, LATEST};

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create topics (CreateTopics).
    Create {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Partitions per topic; -1: the broker's default.
        #[arg(short = 'p', long, default_value_t = -1, allow_hyphen_values = true)]
        partitions: i32,
        /// Replication factor; -1: the broker's default.
        #[arg(short = 'r', long, default_value_t = -1, allow_hyphen_values = true)]
        replicas: i16,
        /// Topic config, `key=value` (repeatable).
        #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Only ask the broker to validate the request (validate_only).
        #[arg(long)]
        dry_run: bool,
    },
    /// List topics (Metadata).
    List {
        /// Include internal topics.
        #[arg(short = 'i', long)]
        internal: bool,
    },
    /// A topic's partitions (leader, replicas, log start offset and high watermark via
    /// ListOffsets) and configs (DescribeConfigs, when the broker has it).
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change a topic's configs (IncrementalAlterConfigs).
    AlterConfig {
        /// Topic name.
        name: String,
        /// Set `key=value` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Remove a config, back to its default (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        /// Add `key=value` to a list config (repeatable).
        #[arg(long = "append", value_name = "KEY=VALUE")]
        append: Vec<String>,
        /// Remove `key=value` from a list config (repeatable).
        #[arg(long = "subtract", value_name = "KEY=VALUE")]
        subtract: Vec<String>,
        /// Only ask the broker to validate the change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Grow a topic to TOTAL partitions (CreatePartitions).
    AddPartitions {
        /// Topic name.
        name: String,
        /// The total number of partitions wanted.
        #[arg(short = 'n', long = "num")]
        total: i32,
        /// Only ask the broker to validate the request.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete topics (DeleteTopics).
    Delete {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Delete a partition's records below OFFSET (DeleteRecords); -1: all of them (up to the
    /// high watermark).
    Trim {
        /// Topic name.
        name: String,
        /// The partition to trim.
        #[arg(short = 'p', long)]
        partition: i32,
        /// The new log start offset; -1: the high watermark.
        #[arg(short = 'o', long, allow_hyphen_values = true)]
        offset: i64,
    },
    /// Move a partition to other brokers (AlterPartitionReassignments): the new replicas
    /// catch up, then the old ones not in the list are dropped. `--cancel` stops an ongoing
    /// move (back to the replicas before it).
    Reassign {
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// The partition to move.
        #[arg(short = 'p', long)]
        partition: i32,
        /// The replicas it should end on, comma separated (the first is the preferred
        /// leader), e.g. `2,4`.
        #[arg(long, value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Vec<i32>,
        /// Cancel the partition's ongoing reassignment instead.
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
    },
    /// Ongoing reassignments (ListPartitionReassignments).
    Reassignments,
}

pub async fn run(mut c: Context, command: TopicCommand) -> Result<()> {
    match command {
        TopicCommand::Create {
            names,
            partitions,
            replicas,
            configs,
            dry_run,
        } => create(&mut c, &names, partitions, replicas, &configs, dry_run).await,
        TopicCommand::List { internal } => list(&mut c, internal).await,
        TopicCommand::Describe { name } => describe(&mut c, &name).await,
        TopicCommand::AlterConfig {
            name,
            set,
            delete,
            append,
            subtract,
            dry_run,
        } => {
            let mut ops = Vec::new();
            for (op, list) in [(0, &set), (2, &append), (3, &subtract)] {
                for kv in list {
                    let (k, v) = split_key_value(kv)?;
                    ops.push((op, k, Some(v)));
                }
            }
            for k in delete {
                ops.push((1, k, None));
            }
            if ops.is_empty() {
                bail!(
                    "nothing to change: give --set KEY=VALUE, --delete KEY, --append or --subtract"
                );
            }
            alter_config(&mut c, &name, ops, dry_run).await
        }
        TopicCommand::AddPartitions {
            name,
            total,
            dry_run,
        } => add_partitions(&mut c, &name, total, dry_run).await,
        TopicCommand::Delete { names } => delete(&mut c, &names).await,
        TopicCommand::Trim {
            name,
            partition,
            offset,
        } => trim(&mut c, &name, partition, offset).await,
        TopicCommand::Reassign {
            topic,
            partition,
            replicas,
            cancel,
        } => reassign(&mut c, &topic, partition, (!cancel).then_some(replicas)).await,
        TopicCommand::Reassignments => reassignments(&mut c).await,
    }
}

async fn reassign(
    c: &mut Context,
    name: &str,
    partition: i32,
    replicas: Option<Vec<i32>>,
) -> Result<()> {
    let controller = c.admin.controller_addr().await?;
    let target = replicas.clone();
    let (_, response): (_, AlterPartitionReassignmentsResponse) = c
        .admin
        .call_at(
            &controller,
            ApiKey::AlterPartitionReassignments,
            versions::ALTER_PARTITION_REASSIGNMENTS,
            |_| {
                AlterPartitionReassignmentsRequest::default()
                    .with_timeout_ms(super::admin::ADMIN_TIMEOUT_MS)
                    .with_topics(vec![ReassignableTopic::default()
                        .with_name(topic_name(name))
                        .with_partitions(vec![ReassignablePartition::default()
                            .with_partition_index(partition)
                            .with_replicas(
                                target.map(|r| r.into_iter().map(BrokerId).collect()),
                            )])])
            },
        )
        .await?;
    check(
        response.error_code,
        || "AlterPartitionReassignments".to_string(),
        response.error_message.as_ref(),
    )?;
    let p = response
        .responses
        .iter()
        .filter(|t| t.name.0.as_str() == name)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == partition)
        .with_context(|| format!("the answer does not mention {name}-{partition}"))?;
    let error = (p.error_code != 0).then(|| {
        KafkaError::new(
            p.error_code,
            format!("partition {name}-{partition}"),
            p.error_message.as_ref(),
        )
    });
    let what = match &replicas {
        Some(r) => ids(r),
        None => "cancel".to_string(),
    };
    match c.format {
        Format::Json => print_json(&json!({
            "topic": name,
            "partition": partition,
            "replicas": replicas,
            "error": error_json(&error),
        })),
        Format::Text => {
            let mut t = Table::new(&["TOPIC", "PARTITION", "TARGET", "STATUS"]);
            t.row(vec![
                name.to_string(),
                partition.to_string(),
                what,
                status(&error),
            ]);
            t.print();
        }
    }
    fail_if_any(&[&error])
}

async fn reassignments(c: &mut Context) -> Result<()> {
    let controller = c.admin.controller_addr().await?;
    let (_, response): (_, ListPartitionReassignmentsResponse) = c
        .admin
        .call_at(
            &controller,
            ApiKey::ListPartitionReassignments,
            versions::LIST_PARTITION_REASSIGNMENTS,
            |_| {
                ListPartitionReassignmentsRequest::default()
                    .with_timeout_ms(super::admin::ADMIN_TIMEOUT_MS)
                    .with_topics(None)
            },
        )
        .await?;
    check(
        response.error_code,
        || "ListPartitionReassignments".to_string(),
        response.error_message.as_ref(),
    )?;
    let plain = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<i32>>();
    let mut rows = Vec::new();
    for t in &response.topics {
        for p in &t.partitions {
            rows.push((
                t.name.0.to_string(),
                p.partition_index,
                plain(&p.replicas),
                plain(&p.adding_replicas),
                plain(&p.removing_replicas),
            ));
        }
    }
    match c.format {
        Format::Json => print_json(&json!({
            "reassignments": rows.iter().map(|(t, p, r, a, d)| json!({
                "topic": t, "partition": p, "replicas": r, "adding": a, "removing": d,
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let mut t = Table::new(&["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"]);
            for (topic, p, r, a, d) in &rows {
                t.row(vec![topic.clone(), p.to_string(), ids(r), ids(a), ids(d)]);
            }
            t.print();
        }
    }
    Ok(())
}

fn split_key_value(kv: &str) -> Result<(String, String)> {
    let (k, v) = kv
        .split_once('=')
        .with_context(|| format!("{kv:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        bail!("{kv:?}: empty config name");
    }
    Ok((k.to_string(), v.to_string()))
}

fn error_json(e: &Option<KafkaError>) -> Value {
    e.as_ref().map_or(Value::Null, KafkaError::to_json)
}

fn status(e: &Option<KafkaError>) -> String {
    e.as_ref()
        .map_or_else(|| "OK".to_string(), ToString::to_string)
}

/// Fails the command when any item failed (their errors were printed with the results).
fn fail_if_any(errors: &[&Option<KafkaError>]) -> Result<()> {
    let failed: Vec<&KafkaError> = errors.iter().filter_map(|e| e.as_ref()).collect();
    match failed.as_slice() {
        [] => Ok(()),
        [one] => Err(anyhow!((*one).clone())),
        many => bail!(
            "{} of {} failed; first: {}",
            many.len(),
            errors.len(),
            many[0]
        ),
    }
}

async fn create(
    c: &mut Context,
    names: &[String],
    partitions: i32,
    replicas: i16,
    configs: &[String],
    dry_run: bool,
) -> Result<()> {
    let configs: Vec<(String, String)> = configs
        .iter()
        .map(|kv| split_key_value(kv))
        .collect::<Result<_>>()?;
    let controller = c.admin.controller_addr().await?;
    let (version, response): (_, CreateTopicsResponse) = c
        .admin
        .call_at(
            &controller,
            ApiKey::CreateTopics,
            versions::CREATE_TOPICS,
            |_| {
                CreateTopicsRequest::default()
                    .with_topics(
                        names
                            .iter()
                            .map(|n| {
                                CreatableTopic::default()
                                    .with_name(topic_name(n))
                                    .with_num_partitions(partitions)
                                    .with_replication_factor(replicas)
                                    .with_configs(
                                        configs
                                            .iter()
                                            .map(|(k, v)| {
                                                CreatableTopicConfig::default()
                                                    .with_name(str_bytes(k))
                                                    .with_value(Some(str_bytes(v)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
                    .with_timeout_ms(super::admin::ADMIN_TIMEOUT_MS)
                    .with_validate_only(dry_run)
            },
        )
        .await?;
    let mut results = Vec::new();
    for name in names {
        let Some(t) = response.topics.iter().find(|t| t.name.0.as_str() == name) else {
            bail!("CreateTopics answer does not mention topic {name:?}");
        };
        let error = (t.error_code != 0).then(|| {
            KafkaError::new(
                t.error_code,
                format!("topic {name:?}"),
                t.error_message.as_ref(),
            )
        });
        // v5+ answers with the counts the topic got (-1 before v5).
        let (p, r) = if version >= 5 && error.is_none() {
            (t.num_partitions, t.replication_factor)
        } else {
            (partitions, replicas)
        };
        results.push((name.clone(), p, r, error));
    }
    match c.format {
        Format::Json => print_json(&json!({
            "dry_run": dry_run,
            "topics": results.iter().map(|(n, p, r, e)| json!({
                "topic": n,
                "partitions": p,
                "replication_factor": r,
                "error": error_json(e),
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let mut t = Table::new(&["TOPIC", "PARTITIONS", "REPLICAS", "STATUS"]);
            for (n, p, r, e) in &results {
                let show = |x: i64| {
                    if x < 0 {
                        "default".to_string()
                    } else {
                        x.to_string()
                    }
                };
                let mut s = status(e);
                if dry_run && e.is_none() {
                    s = "OK (dry run: validated, not created)".to_string();
                }
                t.row(vec![n.clone(), show(*p as i64), show(*r as i64), s]);
            }
            t.print();
        }
    }
    fail_if_any(&results.iter().map(|r| &r.3).collect::<Vec<_>>())
}

async fn list(c: &mut Context, internal: bool) -> Result<()> {
    let cluster = c.admin.metadata(None).await?;
    let topics: Vec<_> = cluster
        .topics
        .iter()
        .filter(|t| internal || !t.internal)
        .collect();
    match c.format {
        Format::Json => print_json(&json!({
            "topics": topics.iter().map(|t| json!({
                "topic": t.name,
                "partitions": t.partitions.len(),
                "replicas": t.partitions.first().map_or(0, |p| p.replicas.len()),
                "internal": t.internal,
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let mut table = Table::new(&["NAME", "PARTITIONS", "REPLICAS"]);
            for t in topics {
                table.row(vec![
                    t.name.clone(),
                    t.partitions.len().to_string(),
                    t.partitions
                        .first()
                        .map_or(0, |p| p.replicas.len())
                        .to_string(),
                ]);
            }
            table.print();
        }
    }
    Ok(())
}

/// ListOffsets at `timestamp` for partitions of `topic`, each asked of its leader:
/// partition → offset or the partition's error.
pub async fn offsets(
    admin: &mut Admin,
    cluster: &ClusterInfo,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<BTreeMap<i32, Result<i64, KafkaError>>> {
    let info = cluster.topic(topic)?;
    let mut by_leader: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for &p in partitions {
        let leader = info
            .partitions
            .iter()
            .find(|x| x.partition == p)
            .ok_or_else(|| KafkaError::new(3, format!("partition {topic}-{p}"), None))?
            .leader;
        match cluster.broker_addr(leader) {
            Ok(addr) => by_leader.entry(addr).or_default().push(p),
            Err(_) => {
                out.insert(
                    p,
                    Err(KafkaError::new(
                        5,
                        format!("partition {topic}-{p} has no leader"),
                        None,
                    )),
                );
            }
        }
    }
    for (addr, ps) in by_leader {
        let (_, response): (_, ListOffsetsResponse) = admin
            .call_at(&addr, ApiKey::ListOffsets, versions::LIST_OFFSETS, |_| {
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_timeout_ms(super::admin::ADMIN_TIMEOUT_MS)
                    .with_topics(vec![ListOffsetsTopic::default()
                        .with_name(topic_name(topic))
                        .with_partitions(
                            ps.iter()
                                .map(|&p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p)
                                        .with_timestamp(timestamp)
                                })
                                .collect(),
                        )])
            })
            .await?;
        for t in &response.topics {
            for p in &t.partitions {
                let v = if p.error_code == 0 {
                    Ok(p.offset)
                } else {
                    Err(KafkaError::new(
                        p.error_code,
                        format!("ListOffsets of {topic}-{}", p.partition_index),
                        None,
                    ))
                };
                out.insert(p.partition_index, v);
            }
        }
        for p in ps {
            out.entry(p).or_insert_with(|| {
                Err(KafkaError::new(
                    -1,
                    format!("ListOffsets answer does not mention {topic}-{p}"),
                    None,
                ))
            });
        }
    }
    Ok(out)
}

/// DescribeConfigs source names (Kafka's `ConfigSource`).
fn config_source(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

struct ConfigEntry {
    name: String,
    value: Option<String>,
    source: &'static str,
    read_only: bool,
    sensitive: bool,
}

/// A topic's configs, `None` when the broker does not offer DescribeConfigs.
async fn topic_configs(admin: &mut Admin, topic: &str) -> Result<Option<Vec<ConfigEntry>>> {
    if !admin.supports(ApiKey::DescribeConfigs).await? {
        return Ok(None);
    }
    let (_, response): (_, DescribeConfigsResponse) = admin
        .call(ApiKey::DescribeConfigs, versions::DESCRIBE_CONFIGS, |_| {
            DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(str_bytes(topic))
                    .with_configuration_keys(None),
            ])
        })
        .await?;
    let r = response
        .results
        .iter()
        .find(|r| r.resource_name.as_str() == topic)
        .with_context(|| format!("DescribeConfigs answer does not mention {topic:?}"))?;
    check(
        r.error_code,
        || format!("configs of topic {topic:?}"),
        r.error_message.as_ref(),
    )?;
    let mut entries: Vec<ConfigEntry> = r
        .configs
        .iter()
        .map(|e| ConfigEntry {
            name: e.name.to_string(),
            value: e.value.as_ref().map(|v| v.to_string()),
            source: config_source(e.config_source),
            read_only: e.read_only,
            sensitive: e.is_sensitive,
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(entries))
}

async fn describe(c: &mut Context, name: &str) -> Result<()> {
    let cluster = c.admin.metadata(Some(&[name.to_string()])).await?;
    let topic = cluster.topic(name)?.clone();
    let partitions: Vec<i32> = topic.partitions.iter().map(|p| p.partition).collect();
    let earliest = offsets(&mut c.admin, &cluster, name, &partitions, EARLIEST).await?;
    let latest = offsets(&mut c.admin, &cluster, name, &partitions, LATEST).await?;
    let configs = topic_configs(&mut c.admin, name).await?;
    let d = TopicDescription {
        name: name.to_string(),
        topic,
        earliest,
        latest,
        configs,
    };
    match c.format {
        Format::Json => print_description_json(&d),
        Format::Text => print_description_text(&d),
    }
    let (earliest, latest) = (&d.earliest, &d.latest);
    // A partition whose offsets could not be read fails the command (after printing).
    let errors: Vec<Option<KafkaError>> = earliest
        .values()
        .chain(latest.values())
        .map(|r| r.as_ref().err().cloned())
        .collect();
    fail_if_any(&errors.iter().collect::<Vec<_>>())
}

/// What `topic describe` shows.
struct TopicDescription {
    name: String,
    topic: super::admin::TopicInfo,
    /// Log start offsets and high watermarks, by partition.
    earliest: BTreeMap<i32, Result<i64, KafkaError>>,
    latest: BTreeMap<i32, Result<i64, KafkaError>>,
    /// `None` when the broker does not offer DescribeConfigs.
    configs: Option<Vec<ConfigEntry>>,
}

fn print_description_json(d: &TopicDescription) {
    let TopicDescription {
        name,
        topic,
        earliest,
        latest,
        configs,
    } = d;
    let offset_of = |m: &BTreeMap<i32, Result<i64, KafkaError>>, p: i32| match m.get(&p) {
        Some(Ok(o)) => (Some(*o), None),
        Some(Err(e)) => (None, Some(e.clone())),
        None => (None, None),
    };
    let replicas = topic.partitions.first().map_or(0, |p| p.replicas.len());
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .map(|p| {
            let (start, e1) = offset_of(earliest, p.partition);
            let (end, e2) = offset_of(latest, p.partition);
            let error = (p.error_code != 0)
                .then(|| {
                    KafkaError::new(
                        p.error_code,
                        format!("partition {name}-{}", p.partition),
                        None,
                    )
                })
                .or(e1)
                .or(e2);
            json!({
                "partition": p.partition,
                "leader": p.leader,
                "replicas": p.replicas,
                "isr": p.isr,
                "log_start_offset": start,
                "high_watermark": end,
                "error": error_json(&error),
            })
        })
        .collect();
    print_json(&json!({
        "topic": name,
        "internal": topic.internal,
        "replicas": replicas,
        "partitions": partitions,
        "configs": configs.as_ref().map(|cs| cs.iter().map(|e| json!({
            "name": e.name,
            "value": e.value,
            "source": e.source,
            "read_only": e.read_only,
            "sensitive": e.sensitive,
        })).collect::<Vec<_>>()),
    }));
}

fn print_description_text(d: &TopicDescription) {
    let TopicDescription {
        name,
        topic,
        earliest,
        latest,
        configs,
    } = d;
    let replicas = topic.partitions.first().map_or(0, |p| p.replicas.len());
    print_section("SUMMARY");
    print_fields(&[
        ("NAME", name.to_string()),
        ("PARTITIONS", topic.partitions.len().to_string()),
        ("REPLICAS", replicas.to_string()),
        ("INTERNAL", topic.internal.to_string()),
    ]);
    super::output::emit("\n");
    print_section("CONFIGS");
    match &configs {
        None => super::output::emit("(the broker does not offer DescribeConfigs)\n"),
        Some(cs) => {
            let mut t = Table::new(&["KEY", "VALUE", "SOURCE"]);
            for e in cs {
                let value = if e.sensitive {
                    "(sensitive)".to_string()
                } else {
                    e.value.clone().unwrap_or_else(|| "(null)".to_string())
                };
                let mut source = e.source.to_string();
                if e.read_only {
                    source.push_str(" (read-only)");
                }
                t.row(vec![e.name.clone(), value, source]);
            }
            t.print();
        }
    }
    super::output::emit("\n");
    print_section("PARTITIONS");
    let mut t = Table::new(&[
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "ISR",
        "LOG-START-OFFSET",
        "HIGH-WATERMARK",
    ]);
    for p in &topic.partitions {
        let show = |m: &BTreeMap<i32, Result<i64, KafkaError>>| match m.get(&p.partition) {
            Some(Ok(o)) => o.to_string(),
            Some(Err(e)) => e.name(),
            None => "-".to_string(),
        };
        t.row(vec![
            p.partition.to_string(),
            p.leader.to_string(),
            ids(&p.replicas),
            ids(&p.isr),
            show(earliest),
            show(latest),
        ]);
    }
    t.print();
}

async fn alter_config(
    c: &mut Context,
    name: &str,
    ops: Vec<(i8, String, Option<String>)>,
    dry_run: bool,
) -> Result<()> {
    let (_, response): (_, IncrementalAlterConfigsResponse) = c
        .admin
        .call(
            ApiKey::IncrementalAlterConfigs,
            versions::INCREMENTAL_ALTER_CONFIGS,
            |_| {
                IncrementalAlterConfigsRequest::default()
                    .with_resources(vec![AlterConfigsResource::default()
                        .with_resource_type(RESOURCE_TOPIC)
                        .with_resource_name(str_bytes(name))
                        .with_configs(
                            ops.iter()
                                .map(|(op, k, v)| {
                                    AlterableConfig::default()
                                        .with_name(str_bytes(k))
                                        .with_config_operation(*op)
                                        .with_value(v.as_deref().map(str_bytes))
                                })
                                .collect(),
                        )])
                    .with_validate_only(dry_run)
            },
        )
        .await?;
    let r = response
        .responses
        .iter()
        .find(|r| r.resource_name.as_str() == name)
        .with_context(|| format!("IncrementalAlterConfigs answer does not mention {name:?}"))?;
    let error = (r.error_code != 0).then(|| {
        KafkaError::new(
            r.error_code,
            format!("altering configs of topic {name:?}"),
            r.error_message.as_ref(),
        )
    });
    let op_name = |op: i8| match op {
        0 => "set",
        1 => "delete",
        2 => "append",
        _ => "subtract",
    };
    match c.format {
        Format::Json => print_json(&json!({
            "topic": name,
            "dry_run": dry_run,
            "changes": ops.iter().map(|(op, k, v)| json!({
                "name": k, "op": op_name(*op), "value": v,
            })).collect::<Vec<_>>(),
            "error": error_json(&error),
        })),
        Format::Text => {
            let mut t = Table::new(&["KEY", "OP", "VALUE", "STATUS"]);
            for (op, k, v) in &ops {
                let s = match (&error, dry_run) {
                    (Some(e), _) => e.name(),
                    (None, true) => "OK (dry run: validated, not applied)".to_string(),
                    (None, false) => "OK".to_string(),
                };
                t.row(vec![
                    k.clone(),
                    op_name(*op).to_string(),
                    v.clone().unwrap_or_default(),
                    s,
                ]);
            }
            t.print();
        }
    }
    fail_if_any(&[&error])
}

async fn add_partitions(c: &mut Context, name: &str, total: i32, dry_run: bool) -> Result<()> {
    let controller = c.admin.controller_addr().await?;
    let (_, response): (_, CreatePartitionsResponse) = c
        .admin
        .call_at(
            &controller,
            ApiKey::CreatePartitions,
            versions::CREATE_PARTITIONS,
            |_| {
                CreatePartitionsRequest::default()
                    .with_topics(vec![CreatePartitionsTopic::default()
                        .with_name(topic_name(name))
                        .with_count(total)
                        .with_assignments(None)])
                    .with_timeout_ms(super::admin::ADMIN_TIMEOUT_MS)
                    .with_validate_only(dry_run)
            },
        )
        .await?;
    let r = response
        .results
        .iter()
        .find(|r| r.name.0.as_str() == name)
        .with_context(|| format!("CreatePartitions answer does not mention {name:?}"))?;
    let error = (r.error_code != 0).then(|| {
        KafkaError::new(
            r.error_code,
            format!("growing topic {name:?} to {total} partitions"),
            r.error_message.as_ref(),
        )
    });
    match c.format {
        Format::Json => print_json(&json!({
            "topic": name,
            "total_partitions": total,
            "dry_run": dry_run,
            "error": error_json(&error),
        })),
        Format::Text => {
            let mut t = Table::new(&["TOPIC", "PARTITIONS", "STATUS"]);
            let mut s = status(&error);
            if dry_run && error.is_none() {
                s = "OK (dry run: validated, not applied)".to_string();
            }
            t.row(vec![name.to_string(), total.to_string(), s]);
            t.print();
        }
    }
    fail_if_any(&[&error])
}

async fn delete(c: &mut Context, names: &[String]) -> Result<()> {
    let controller = c.admin.controller_addr().await?;
    let (_, response): (_, DeleteTopicsResponse) = c
        .admin
        .call_at(
            &controller,
            ApiKey::DeleteTopics,
            versions::DELETE_TOPICS,
            |v| {
                let request =
                    DeleteTopicsRequest::default().with_timeout_ms(super::admin::ADMIN_TIMEOUT_MS);
                if v >= 6 {
                    request.with_topics(
                        names
                            .iter()
                            .map(|n| DeleteTopicState::default().with_name(Some(topic_name(n))))
                            .collect(),
                    )
                } else {
                    request.with_topic_names(names.iter().map(|n| topic_name(n)).collect())
                }
            },
        )
        .await?;
    let mut results = Vec::new();
    for name in names {
        let r = response
            .responses
            .iter()
            .find(|r| r.name.as_ref().map(|n| n.0.as_str()) == Some(name.as_str()))
            .with_context(|| format!("DeleteTopics answer does not mention {name:?}"))?;
        let error = (r.error_code != 0).then(|| {
            KafkaError::new(
                r.error_code,
                format!("topic {name:?}"),
                r.error_message.as_ref(),
            )
        });
        results.push((name.clone(), error));
    }
    match c.format {
        Format::Json => print_json(&json!({
            "topics": results.iter().map(|(n, e)| json!({
                "topic": n, "error": error_json(e),
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let mut t = Table::new(&["TOPIC", "STATUS"]);
            for (n, e) in &results {
                t.row(vec![n.clone(), status(e)]);
            }
            t.print();
        }
    }
    fail_if_any(&results.iter().map(|r| &r.1).collect::<Vec<_>>())
}

async fn trim(c: &mut Context, name: &str, partition: i32, offset: i64) -> Result<()> {
    let cluster = c.admin.metadata(Some(&[name.to_string()])).await?;
    let topic = cluster.topic(name)?;
    let p = topic
        .partitions
        .iter()
        .find(|p| p.partition == partition)
        .ok_or_else(|| KafkaError::new(3, format!("partition {name}-{partition}"), None))?;
    let leader = cluster.broker_addr(p.leader)?;
    let (_, response): (_, DeleteRecordsResponse) = c
        .admin
        .call_at(
            &leader,
            ApiKey::DeleteRecords,
            versions::DELETE_RECORDS,
            |_| {
                DeleteRecordsRequest::default()
                    .with_topics(vec![DeleteRecordsTopic::default()
                        .with_name(topic_name(name))
                        .with_partitions(vec![DeleteRecordsPartition::default()
                            .with_partition_index(partition)
                            .with_offset(offset)])])
                    .with_timeout_ms(super::admin::ADMIN_TIMEOUT_MS)
            },
        )
        .await?;
    let r = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|r| r.partition_index == partition)
        .with_context(|| format!("DeleteRecords answer does not mention {name}-{partition}"))?;
    let error = (r.error_code != 0).then(|| {
        KafkaError::new(
            r.error_code,
            format!("deleting records of {name}-{partition} below offset {offset}"),
            None,
        )
    });
    match c.format {
        Format::Json => print_json(&json!({
            "topic": name,
            "partition": partition,
            "log_start_offset": (error.is_none()).then_some(r.low_watermark),
            "error": error_json(&error),
        })),
        Format::Text => {
            let mut t = Table::new(&["TOPIC", "PARTITION", "LOG-START-OFFSET", "STATUS"]);
            t.row(vec![
                name.to_string(),
                partition.to_string(),
                if error.is_none() {
                    r.low_watermark.to_string()
                } else {
                    "-".to_string()
                },
                status(&error),
            ]);
            t.print();
        }
    }
    fail_if_any(&[&error])
}
