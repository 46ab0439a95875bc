//! DescribeConfigs (v1-4): TOPIC resources list every topic config of the registry with the
//! value in effect and where it comes from; BROKER resources list what this node runs with
//! (name = its node id) or the cluster-wide dynamic defaults (name ""). Other resource types
//! and other broker ids get INVALID_REQUEST for that resource. A resource named again in one
//! request gets INVALID_REQUEST for each repeat, and a request names at most
//! `DESCRIBE_CONFIGS_RESOURCES_MAX` resources, so a response never grows with repeats.

use super::{decode_body, refuse_over, respond, Outcome};
use crate::errors;
use crate::limits::DESCRIBE_CONFIGS_RESOURCES_MAX;
use crate::metadata::valid_topic_name;
use crate::shard::{self, Shard};
use crate::topic_config::{
    broker_layers, topic_layers, BrokerView, ConfigSource, ConfigType, Layer, TOPIC_CONFIGS,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use std::collections::HashSet;

/// Kafka's resource types.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// This node's id (a single-node cluster).
pub const NODE_ID: i32 = 0;

/// One config as DescribeConfigs reports it.
#[derive(Debug, Clone)]
pub struct ConfigEntry {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
    pub read_only: bool,
    pub kind: ConfigType,
    pub doc: &'static str,
    /// In effect first.
    pub synonyms: Vec<Layer>,
}

/// A static broker config: name, type, documentation, Kafka's default (None: no default).
type StaticConfig = (&'static str, ConfigType, &'static str, Option<&'static str>);

const STATIC_BROKER_CONFIGS: &[StaticConfig] = &[
    ("advertised.listeners", ConfigType::String, "Listeners to publish to clients.", None),
    ("auto.create.topics.enable", ConfigType::Boolean, "Enable auto creation of topic on the server.", Some("true")),
    ("broker.id", ConfigType::Int, "The broker id for this server.", Some("-1")),
    ("default.replication.factor", ConfigType::Int, "The replication factor for automatically created topics.", Some("1")),
    ("fetch.max.bytes", ConfigType::Int, "The maximum number of bytes we will return for a fetch request.", Some("57671680")),
    ("listeners", ConfigType::String, "Listener list: the URIs the broker listens on.", None),
    ("log.cleaner.backoff.ms", ConfigType::Long, "The amount of time to sleep when there are no logs to clean.", Some("15000")),
    ("log.cleaner.dedupe.buffer.size", ConfigType::Long, "The total memory used for log deduplication across all cleaner threads (here: shards, each one an equal share).", Some("134217728")),
    ("log.cleaner.enable", ConfigType::Boolean, "Enable the log cleaner process to run on the server.", Some("true")),
    ("log.cleaner.threads", ConfigType::Int, "The number of background threads to use for log cleaning (here: one cleaner per shard).", Some("1")),
    ("log.dirs", ConfigType::String, "The directories in which the log data is kept.", None),
    ("log.retention.check.interval.ms", ConfigType::Long, "The frequency in milliseconds that the log cleaner checks whether any log is eligible for deletion.", Some("300000")),
    ("max.connections", ConfigType::Int, "The maximum number of connections we allow in the broker at any time.", Some("2147483647")),
    ("node.id", ConfigType::Int, "The node ID associated with the roles this process is playing.", Some("-1")),
    ("num.partitions", ConfigType::Int, "The default number of log partitions per topic.", Some("1")),
    ("offsets.topic.num.partitions", ConfigType::Int, "The number of partitions for the offset commit topic.", Some("50")),
    ("offsets.topic.replication.factor", ConfigType::Short, "The replication factor for the offsets topic.", Some("3")),
    ("socket.request.max.bytes", ConfigType::Int, "The maximum number of bytes in a socket request.", Some("104857600")),
];

/// Whether `name` is a broker config this broker reports (static or a topic config synonym).
pub fn is_broker_config(name: &str) -> bool {
    STATIC_BROKER_CONFIGS.iter().any(|(n, ..)| *n == name)
        || TOPIC_CONFIGS.iter().any(|d| d.synonym == Some(name))
}

fn static_broker_value(shard: &Shard, name: &str) -> String {
    let shared = &shard.shared;
    let c = &shared.config;
    match name {
        "advertised.listeners" => shared
            .listeners
            .iter()
            .map(|l| format!("{}://{}:{}", l.name, l.advertised_host, l.advertised_port))
            .collect::<Vec<_>>()
            .join(","),
        "auto.create.topics.enable" => c.auto_create_topics.to_string(),
        "broker.id" | "node.id" => shared.node_id.to_string(),
        "default.replication.factor" | "offsets.topic.replication.factor" => {
            crate::shard::cluster::default_replication_factor().to_string()
        }
        "fetch.max.bytes" => c.fetch_bytes_max.to_string(),
        "listeners" => shared
            .listeners
            .iter()
            .map(|l| format!("{}://{}", l.name, l.bound))
            .collect::<Vec<_>>()
            .join(","),
        "log.cleaner.backoff.ms" => c.cleaner.backoff.as_millis().to_string(),
        "log.cleaner.dedupe.buffer.size" => c.cleaner.dedupe_buffer_bytes.to_string(),
        "log.cleaner.enable" => c.cleaner.enabled.to_string(),
        "log.cleaner.threads" => shared.shard_count.to_string(),
        "log.dirs" => c.data_dir.display().to_string(),
        "log.retention.check.interval.ms" => c.retention_check_interval.as_millis().to_string(),
        "max.connections" => c.max_connections.to_string(),
        "num.partitions" => c.default_partitions.to_string(),
        "offsets.topic.num.partitions" => crate::groups::OFFSETS_PARTITIONS.to_string(),
        "socket.request.max.bytes" => c.frame_bytes_max.to_string(),
        _ => String::new(),
    }
}

fn entry_of(
    name: &str,
    layers: Vec<Layer>,
    read_only: bool,
    kind: ConfigType,
    doc: &'static str,
) -> ConfigEntry {
    let top = layers.first().cloned().unwrap_or(Layer {
        name: name.into(),
        value: String::new(),
        source: ConfigSource::Default,
    });
    ConfigEntry {
        name: name.into(),
        value: top.value,
        source: top.source,
        read_only,
        kind,
        doc,
        synonyms: layers,
    }
}

/// Every config of a topic with `overrides`, as DescribeConfigs (and CreateTopics v5+)
/// report them.
pub fn topic_entries(
    overrides: &std::collections::BTreeMap<String, String>,
    broker: BrokerView<'_>,
) -> Vec<ConfigEntry> {
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let layers = topic_layers(def, overrides, broker);
            entry_of(def.name, layers, def.read_only(), def.kind, def.doc)
        })
        .collect()
}

/// Every config of this broker (resource name = node id).
fn broker_entries(shard: &Shard, broker: BrokerView<'_>) -> Vec<ConfigEntry> {
    let mut out: Vec<ConfigEntry> = STATIC_BROKER_CONFIGS
        .iter()
        .map(|&(name, kind, doc, default)| {
            let value = static_broker_value(shard, name);
            let source = if default == Some(value.as_str()) {
                ConfigSource::Default
            } else {
                ConfigSource::StaticBroker
            };
            let layers = vec![Layer {
                name: name.into(),
                value,
                source,
            }];
            entry_of(name, layers, true, kind, doc)
        })
        .collect();
    for def in TOPIC_CONFIGS {
        let Some(synonym) = def.synonym else { continue };
        if out.iter().any(|e| e.name == synonym) {
            continue;
        }
        let dynamic = shard::broker_config_is_dynamic(synonym);
        let layers = broker_layers(synonym, def.default, broker);
        out.push(entry_of(synonym, layers, !dynamic, def.kind, def.doc));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The cluster-wide dynamic defaults (resource name "").
fn cluster_default_entries(broker: BrokerView<'_>) -> Vec<ConfigEntry> {
    broker
        .dynamic
        .cluster
        .iter()
        .filter_map(|(name, value)| {
            let def = TOPIC_CONFIGS.iter().find(|d| d.synonym == Some(name))?;
            let layers = vec![Layer {
                name: name.clone(),
                value: value.clone(),
                source: ConfigSource::DynamicDefaultBroker,
            }];
            Some(entry_of(name, layers, false, def.kind, def.doc))
        })
        .collect()
}

/// The entries of one resource, or its error code and message.
fn describe_resource(
    shard: &Shard,
    resource_type: i8,
    name: &str,
) -> Result<Vec<ConfigEntry>, (i16, String)> {
    match resource_type {
        RESOURCE_TOPIC => {
            if !valid_topic_name(name) {
                return Err((
                    errors::INVALID_TOPIC_EXCEPTION,
                    format!("invalid topic name {name:?}"),
                ));
            }
            let topic = shard.topic(name).ok_or_else(|| {
                (
                    errors::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic {name:?}"),
                )
            })?;
            Ok(shard.with_broker_view(|b| topic_entries(&topic.configs, b)))
        }
        RESOURCE_BROKER => match broker_scope(name) {
            Some(crate::shard::BrokerScope::ThisBroker) => {
                Ok(shard.with_broker_view(|b| broker_entries(shard, b)))
            }
            Some(crate::shard::BrokerScope::Cluster) => {
                Ok(shard.with_broker_view(cluster_default_entries))
            }
            None => Err((
                errors::INVALID_REQUEST,
                format!(
                    "unexpected broker id {name:?}: this is node {}",
                    crate::shard::current().shared.node_id
                ),
            )),
        },
        other => Err((
            errors::INVALID_REQUEST,
            format!("resource type {other} is not supported (TOPIC = 2, BROKER = 4)"),
        )),
    }
}

/// Which broker configs a BROKER resource name means, if it names this node or the cluster.
pub fn broker_scope(name: &str) -> Option<crate::shard::BrokerScope> {
    if name.is_empty() {
        Some(crate::shard::BrokerScope::Cluster)
    } else if name.trim().parse::<i32>() == Ok(crate::shard::current().shared.node_id) {
        Some(crate::shard::BrokerScope::ThisBroker)
    } else {
        None
    }
}

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DescribeConfigsRequest = decode_body(&mut req)?;
    let v = req.version;
    refuse_over(
        "DescribeConfigs",
        "resources",
        body.resources.len(),
        DESCRIBE_CONFIGS_RESOURCES_MAX,
    )?;
    let shard = shard::current();
    let mut seen = HashSet::new();
    let results = body
        .resources
        .into_iter()
        .map(|r| {
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let described = if seen.insert((r.resource_type, r.resource_name.clone())) {
                match crate::security::authorizer::config_refusal(
                    conn,
                    crate::acl::DESCRIBE_CONFIGS,
                    r.resource_type,
                    &r.resource_name,
                ) {
                    Some(refusal) => Err(refusal),
                    None => describe_resource(&shard, r.resource_type, &r.resource_name),
                }
            } else {
                Err((
                    errors::INVALID_REQUEST,
                    format!("duplicate resource {:?}", r.resource_name.as_str()),
                ))
            };
            match described {
                Ok(entries) => {
                    // Keys are bounded by the frame; a set keeps the match linear.
                    let keys: Option<HashSet<&str>> = r
                        .configuration_keys
                        .as_ref()
                        .map(|keys| keys.iter().map(|k| k.as_str()).collect());
                    let wanted = |name: &str| keys.as_ref().is_none_or(|keys| keys.contains(name));
                    let configs = entries
                        .into_iter()
                        .filter(|e| wanted(&e.name))
                        .map(|e| {
                            encode_entry(e, v, body.include_synonyms, body.include_documentation)
                        })
                        .collect();
                    result = result.with_configs(configs);
                }
                Err((code, message)) => {
                    result = result
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(message)));
                }
            }
            result
        })
        .collect();
    Ok(respond(
        &req,
        &DescribeConfigsResponse::default().with_results(results),
    ))
}

fn encode_entry(
    e: ConfigEntry,
    version: i16,
    include_synonyms: bool,
    include_documentation: bool,
) -> DescribeConfigsResourceResult {
    let mut out = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(e.name))
        .with_value(Some(StrBytes::from_string(e.value)))
        .with_read_only(e.read_only)
        .with_config_source(e.source as i8)
        .with_is_sensitive(false);
    if include_synonyms {
        out = out.with_synonyms(
            e.synonyms
                .into_iter()
                .map(|l| {
                    DescribeConfigsSynonym::default()
                        .with_name(StrBytes::from_string(l.name))
                        .with_value(Some(StrBytes::from_string(l.value)))
                        .with_source(l.source as i8)
                })
                .collect(),
        );
    }
    if version >= 3 {
        out = out.with_config_type(e.kind as i8);
        if include_documentation {
            out = out.with_documentation(Some(StrBytes::from_static_str(e.doc)));
        }
    }
    out
}
