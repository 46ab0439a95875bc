//! The registry of topic configs Kafka documents: for each its type, documentation, the broker
//! config it falls back to, its default, its validator and whether this broker acts on it.
//!
//! Honesty rule: a config the broker does not act on is read-only, and only the values that
//! describe what the broker does anyway are accepted; any other value is refused with
//! INVALID_CONFIG naming the key. A topic's effective value comes from, in order: its own
//! override, this broker's dynamic config, the cluster-wide dynamic default, the static broker
//! config (flags), the default.

use crate::config::BrokerConfig;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Kafka's `ConfigType` numbering (DescribeConfigs v3+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Short = 4,
    Long = 5,
    Double = 6,
    List = 7,
}

/// Kafka's `ConfigSource` numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum ConfigSource {
    DynamicTopic = 1,
    DynamicBroker = 2,
    DynamicDefaultBroker = 3,
    StaticBroker = 4,
    Default = 5,
}

/// What values a config takes.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// An integer (Int or Long) in `min..=max`.
    Integer {
        min: i64,
        max: i64,
    },
    /// A floating-point number in `min..=max`.
    Double {
        min: f64,
        max: f64,
    },
    Boolean,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A comma-separated list, each item one of these, at least one item.
    ListOf(&'static [&'static str]),
    /// A Kafka version string such as `3.0-IV1` or `2.8`.
    Version,
    /// Replica throttle list: `*`, empty, or `partition:broker` pairs.
    ThrottledReplicas,
}

/// Whether the broker acts on a config.
#[derive(Debug, Clone, Copy)]
pub enum Support {
    /// Acted on; a change applies to live partitions.
    Honoured,
    /// Acted on, but only these values: the others need a feature this broker lacks (`why`).
    Only {
        accepted: &'static [&'static str],
        why: &'static str,
    },
    /// Not acted on (read-only): only these values, which describe what the broker does.
    Fixed {
        accepted: &'static [&'static str],
        why: &'static str,
    },
    /// Not acted on (read-only), and no valid value changes what this broker does (`why`);
    /// valid values are stored.
    Inert { why: &'static str },
}

#[derive(Debug)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub kind: ConfigType,
    pub doc: &'static str,
    /// The broker config the topic's value falls back to.
    pub synonym: Option<&'static str>,
    /// This broker's default (Kafka's, except `segment.ms`: no age-based roll by default).
    pub default: &'static str,
    pub rule: Rule,
    pub support: Support,
}

impl TopicConfigDef {
    pub fn read_only(&self) -> bool {
        matches!(self.support, Support::Fixed { .. } | Support::Inert { .. })
    }

    /// Checks `value` against the type, the range and what the broker supports; the value
    /// in its normal form, or the reason (naming the key) it is refused.
    pub fn check(&self, value: &str) -> Result<String, String> {
        let name = self.name;
        let invalid =
            |why: String| format!("Invalid value {value} for configuration {name}: {why}");
        let v = value.trim();
        let normal = match self.rule {
            Rule::Integer { min, max } => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| invalid("not a number of type INT/LONG".into()))?;
                if n < min || n > max {
                    return Err(invalid(format!("must be between {min} and {max}")));
                }
                n.to_string()
            }
            Rule::Double { min, max } => {
                let n: f64 = v
                    .parse()
                    .map_err(|_| invalid("not a number of type DOUBLE".into()))?;
                if !(min..=max).contains(&n) {
                    return Err(invalid(format!("must be between {min} and {max}")));
                }
                v.to_string()
            }
            Rule::Boolean => match v.to_ascii_lowercase().as_str() {
                b @ ("true" | "false") => b.to_string(),
                _ => return Err(invalid("expected true or false".into())),
            },
            Rule::OneOf(allowed) => match allowed.iter().find(|a| a.eq_ignore_ascii_case(v)) {
                Some(a) => a.to_string(),
                None => {
                    return Err(invalid(format!(
                        "String must be one of: {}",
                        allowed.join(", ")
                    )))
                }
            },
            Rule::ListOf(allowed) => {
                let items: Vec<&str> = v.split(',').map(str::trim).collect();
                if items.iter().any(|i| i.is_empty()) {
                    return Err(invalid("empty list item".into()));
                }
                if let Some(bad) = items.iter().find(|i| !allowed.contains(i)) {
                    return Err(invalid(format!(
                        "{bad} is not one of: {}",
                        allowed.join(", ")
                    )));
                }
                let mut unique: Vec<&str> = Vec::new();
                for i in items {
                    if !unique.contains(&i) {
                        unique.push(i);
                    }
                }
                unique.join(",")
            }
            Rule::Version => {
                let ok = !v.is_empty()
                    && v.split(['.', '-'])
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
                    && v.as_bytes()[0].is_ascii_digit();
                if !ok {
                    return Err(invalid("not a Kafka version such as 3.0-IV1".into()));
                }
                v.to_string()
            }
            Rule::ThrottledReplicas => {
                let ok = v.is_empty()
                    || v == "*"
                    || v.split(',').all(|pair| {
                        let mut it = pair.trim().split(':');
                        matches!(
                            (it.next(), it.next(), it.next()),
                            (Some(p), Some(b), None) if p.parse::<u32>().is_ok() && b.parse::<u32>().is_ok()
                        )
                    });
                if !ok {
                    return Err(invalid(
                        "expected *, or partition:broker pairs separated by commas".into(),
                    ));
                }
                v.to_string()
            }
        };
        match self.support {
            Support::Honoured | Support::Inert { .. } => Ok(normal),
            Support::Only { accepted, why } | Support::Fixed { accepted, why } => {
                if accepted.contains(&normal.as_str()) {
                    Ok(normal)
                } else {
                    Err(format!("{name}={value} is refused: {why}"))
                }
            }
        }
    }
}

const LONG_MAX: i64 = i64::MAX;
const INT_MAX: i64 = i32::MAX as i64;
const LONG_MAX_STR: &str = "9223372036854775807";

const NO_TIERED: &str = "tiered storage is not implemented (remote.storage.enable is false)";
const ONE_NODE: &str = "this broker is a single node: every partition has one replica";

/// Every topic config, sorted by name.
pub static TOPIC_CONFIGS: &[TopicConfigDef] = &[
    TopicConfigDef {
        name: "cleanup.policy",
        kind: ConfigType::List,
        doc: "A string that is either \"delete\" or \"compact\" or both. This string designates the retention policy to use on old log segments.",
        synonym: Some("log.cleanup.policy"),
        default: "delete",
        rule: Rule::ListOf(&["delete", "compact"]),
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "compression.gzip.level",
        kind: ConfigType::Int,
        doc: "The compression level to use if compression.type is set to gzip.",
        synonym: Some("compression.gzip.level"),
        default: "-1",
        rule: Rule::Integer { min: -1, max: 9 },
        support: Support::Inert { why: "batches are stored as the producer compressed them (compression.type is producer)" },
    },
    TopicConfigDef {
        name: "compression.lz4.level",
        kind: ConfigType::Int,
        doc: "The compression level to use if compression.type is set to lz4.",
        synonym: Some("compression.lz4.level"),
        default: "9",
        rule: Rule::Integer { min: 1, max: 17 },
        support: Support::Inert { why: "batches are stored as the producer compressed them (compression.type is producer)" },
    },
    TopicConfigDef {
        name: "compression.type",
        kind: ConfigType::String,
        doc: "Specify the final compression type for a given topic. 'producer' means retain the original compression codec set by the producer.",
        synonym: Some("compression.type"),
        default: "producer",
        rule: Rule::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        support: Support::Fixed { accepted: &["producer"], why: "this broker stores batches as the producer compressed them; it does not recompress" },
    },
    TopicConfigDef {
        name: "compression.zstd.level",
        kind: ConfigType::Int,
        doc: "The compression level to use if compression.type is set to zstd.",
        synonym: Some("compression.zstd.level"),
        default: "3",
        rule: Rule::Integer { min: -131072, max: 22 },
        support: Support::Inert { why: "batches are stored as the producer compressed them (compression.type is producer)" },
    },
    TopicConfigDef {
        name: "delete.retention.ms",
        kind: ConfigType::Long,
        doc: "The amount of time to retain delete tombstone markers for log compacted topics.",
        synonym: Some("log.cleaner.delete.retention.ms"),
        default: "86400000",
        rule: Rule::Integer { min: 0, max: LONG_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "file.delete.delay.ms",
        kind: ConfigType::Long,
        doc: "The time to wait before deleting a file from the filesystem.",
        synonym: Some("log.segment.delete.delay.ms"),
        default: "60000",
        rule: Rule::Integer { min: 0, max: LONG_MAX },
        support: Support::Inert { why: "segments are unlinked at once; a read in flight keeps its open file until it ends" },
    },
    TopicConfigDef {
        name: "flush.messages",
        kind: ConfigType::Long,
        doc: "This setting allows specifying an interval at which we will force an fsync of data written to the log.",
        synonym: Some("log.flush.interval.messages"),
        default: LONG_MAX_STR,
        rule: Rule::Integer { min: 1, max: LONG_MAX },
        support: Support::Fixed { accepted: &[LONG_MAX_STR], why: "fdatasync follows the broker's --flush policy, not a per-topic count" },
    },
    TopicConfigDef {
        name: "flush.ms",
        kind: ConfigType::Long,
        doc: "This setting allows specifying a time interval at which we will force an fsync of data written to the log.",
        synonym: Some("log.flush.interval.ms"),
        default: LONG_MAX_STR,
        rule: Rule::Integer { min: 0, max: LONG_MAX },
        support: Support::Fixed { accepted: &[LONG_MAX_STR], why: "fdatasync follows the broker's --flush policy, not a per-topic interval" },
    },
    TopicConfigDef {
        name: "follower.replication.throttled.replicas",
        kind: ConfigType::List,
        doc: "A list of replicas for which log replication should be throttled on the follower side.",
        synonym: None,
        default: "",
        rule: Rule::ThrottledReplicas,
        support: Support::Inert { why: ONE_NODE },
    },
    TopicConfigDef {
        name: "index.interval.bytes",
        kind: ConfigType::Int,
        doc: "This setting controls how frequently Kafka adds an index entry to its offset index.",
        synonym: Some("log.index.interval.bytes"),
        default: "4096",
        rule: Rule::Integer { min: 0, max: INT_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "leader.replication.throttled.replicas",
        kind: ConfigType::List,
        doc: "A list of replicas for which log replication should be throttled on the leader side.",
        synonym: None,
        default: "",
        rule: Rule::ThrottledReplicas,
        support: Support::Inert { why: ONE_NODE },
    },
    TopicConfigDef {
        name: "local.retention.bytes",
        kind: ConfigType::Long,
        doc: "The maximum size of local log segments that can grow for a partition before it deletes the old segments (tiered storage).",
        synonym: Some("log.local.retention.bytes"),
        default: "-2",
        rule: Rule::Integer { min: -2, max: LONG_MAX },
        support: Support::Inert { why: NO_TIERED },
    },
    TopicConfigDef {
        name: "local.retention.ms",
        kind: ConfigType::Long,
        doc: "The number of milliseconds to keep the local log segment before it gets deleted (tiered storage).",
        synonym: Some("log.local.retention.ms"),
        default: "-2",
        rule: Rule::Integer { min: -2, max: LONG_MAX },
        support: Support::Inert { why: NO_TIERED },
    },
    TopicConfigDef {
        name: "max.compaction.lag.ms",
        kind: ConfigType::Long,
        doc: "The maximum time a message will remain ineligible for compaction in the log.",
        synonym: Some("log.cleaner.max.compaction.lag.ms"),
        default: LONG_MAX_STR,
        rule: Rule::Integer { min: 1, max: LONG_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "max.message.bytes",
        kind: ConfigType::Int,
        doc: "The largest record batch size allowed by Kafka (after compression if compression is enabled).",
        synonym: Some("message.max.bytes"),
        default: "1048588",
        rule: Rule::Integer { min: 61, max: crate::limits::RECORD_SECTION_BYTES_MAX as i64 },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "message.downconversion.enable",
        kind: ConfigType::Boolean,
        doc: "This configuration controls whether down-conversion of message formats is enabled to satisfy consume requests.",
        synonym: Some("log.message.downconversion.enable"),
        default: "true",
        rule: Rule::Boolean,
        support: Support::Inert { why: "Fetch below v4 is not served, so no record is ever down-converted" },
    },
    TopicConfigDef {
        name: "message.format.version",
        kind: ConfigType::String,
        doc: "[DEPRECATED] Specify the message format version the broker will use to append messages to the logs.",
        synonym: Some("log.message.format.version"),
        default: "3.0-IV1",
        rule: Rule::Version,
        support: Support::Inert { why: "every batch is stored as RecordBatch v2 (ignored since Kafka 3.0)" },
    },
    TopicConfigDef {
        name: "message.timestamp.after.max.ms",
        kind: ConfigType::Long,
        doc: "The maximum allowed time difference between the message timestamp and the broker's timestamp when the message timestamp is later than the broker's timestamp (CreateTime only).",
        synonym: Some("log.message.timestamp.after.max.ms"),
        default: LONG_MAX_STR,
        rule: Rule::Integer { min: 0, max: LONG_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "message.timestamp.before.max.ms",
        kind: ConfigType::Long,
        doc: "The maximum allowed time difference between the broker's timestamp and the message timestamp when the message timestamp is earlier than the broker's timestamp (CreateTime only).",
        synonym: Some("log.message.timestamp.before.max.ms"),
        default: LONG_MAX_STR,
        rule: Rule::Integer { min: 0, max: LONG_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "message.timestamp.difference.max.ms",
        kind: ConfigType::Long,
        doc: "[DEPRECATED] The maximum difference allowed between the timestamp when a broker receives a message and the timestamp specified in the message; used for before/after.max.ms left at their default.",
        synonym: Some("log.message.timestamp.difference.max.ms"),
        default: LONG_MAX_STR,
        rule: Rule::Integer { min: 0, max: LONG_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "message.timestamp.type",
        kind: ConfigType::String,
        doc: "Define whether the timestamp in the message is message create time or log append time.",
        synonym: Some("log.message.timestamp.type"),
        default: "CreateTime",
        rule: Rule::OneOf(&["CreateTime", "LogAppendTime"]),
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "min.cleanable.dirty.ratio",
        kind: ConfigType::Double,
        doc: "This configuration controls how frequently the log compactor will attempt to clean the log.",
        synonym: Some("log.cleaner.min.cleanable.ratio"),
        default: "0.5",
        rule: Rule::Double { min: 0.0, max: 1.0 },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "min.compaction.lag.ms",
        kind: ConfigType::Long,
        doc: "The minimum time a message will remain uncompacted in the log.",
        synonym: Some("log.cleaner.min.compaction.lag.ms"),
        default: "0",
        rule: Rule::Integer { min: 0, max: LONG_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "min.insync.replicas",
        kind: ConfigType::Int,
        doc: "When a producer sets acks to \"all\" (or \"-1\"), min.insync.replicas specifies the minimum number of replicas that must acknowledge a write for the write to be considered successful.",
        synonym: Some("min.insync.replicas"),
        default: "1",
        rule: Rule::Integer { min: 1, max: INT_MAX },
        support: Support::Fixed { accepted: &["1"], why: "this broker is a single node: a partition has one in-sync replica, so a higher value would refuse every acks=all produce" },
    },
    TopicConfigDef {
        name: "preallocate",
        kind: ConfigType::Boolean,
        doc: "True if we should preallocate the file on disk when creating a new log segment.",
        synonym: Some("log.preallocate"),
        default: "false",
        rule: Rule::Boolean,
        support: Support::Fixed { accepted: &["false"], why: "segment files are not preallocated" },
    },
    TopicConfigDef {
        name: "remote.log.copy.disable",
        kind: ConfigType::Boolean,
        doc: "Determines whether tiered data for a topic should become read only, and no more data uploading on a topic.",
        synonym: None,
        default: "false",
        rule: Rule::Boolean,
        support: Support::Inert { why: NO_TIERED },
    },
    TopicConfigDef {
        name: "remote.log.delete.on.disable",
        kind: ConfigType::Boolean,
        doc: "Determines whether tiered data for a topic should be deleted after tiered storage is disabled on a topic.",
        synonym: None,
        default: "false",
        rule: Rule::Boolean,
        support: Support::Inert { why: NO_TIERED },
    },
    TopicConfigDef {
        name: "remote.storage.enable",
        kind: ConfigType::Boolean,
        doc: "To enable tiered storage for a topic, set this configuration as true.",
        synonym: None,
        default: "false",
        rule: Rule::Boolean,
        support: Support::Fixed { accepted: &["false"], why: "tiered storage is not implemented" },
    },
    TopicConfigDef {
        name: "retention.bytes",
        kind: ConfigType::Long,
        doc: "This configuration controls the maximum size a partition can grow to before we will discard old log segments to free up space if we are using the \"delete\" retention policy. -1: no limit.",
        synonym: Some("log.retention.bytes"),
        default: "-1",
        rule: Rule::Integer { min: -1, max: LONG_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "retention.ms",
        kind: ConfigType::Long,
        doc: "This configuration controls the maximum time we will retain a log before we will discard old log segments to free up space if we are using the \"delete\" retention policy. -1: no time limit.",
        synonym: Some("log.retention.ms"),
        default: "604800000",
        rule: Rule::Integer { min: -1, max: LONG_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "segment.bytes",
        kind: ConfigType::Int,
        doc: "This configuration controls the segment file size for the log.",
        synonym: Some("log.segment.bytes"),
        default: "1073741824",
        rule: Rule::Integer { min: 14, max: ringbroker_storage::SEGMENT_BYTES_MAX as i64 },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "segment.index.bytes",
        kind: ConfigType::Int,
        doc: "This configuration controls the size of the index that maps offsets to file positions.",
        synonym: Some("log.index.size.max.bytes"),
        default: "10485760",
        rule: Rule::Integer { min: 4, max: INT_MAX },
        support: Support::Inert { why: "indexes here grow with their segment, which rolls on segment.bytes and segment.ms only" },
    },
    TopicConfigDef {
        name: "segment.jitter.ms",
        kind: ConfigType::Long,
        doc: "The maximum random jitter subtracted from the scheduled segment roll time.",
        synonym: Some("log.roll.jitter.ms"),
        default: "0",
        rule: Rule::Integer { min: 0, max: LONG_MAX },
        support: Support::Fixed { accepted: &["0"], why: "segments roll at segment.ms without jitter" },
    },
    TopicConfigDef {
        name: "segment.ms",
        kind: ConfigType::Long,
        doc: "This configuration controls the period of time after which Kafka will force the log to roll even if the segment file isn't full. This broker's default is no age-based roll (9223372036854775807).",
        synonym: Some("log.roll.ms"),
        default: LONG_MAX_STR,
        rule: Rule::Integer { min: 1, max: LONG_MAX },
        support: Support::Honoured,
    },
    TopicConfigDef {
        name: "unclean.leader.election.enable",
        kind: ConfigType::Boolean,
        doc: "Indicates whether to enable replicas not in the ISR set to be elected as leader as a last resort.",
        synonym: Some("unclean.leader.election.enable"),
        default: "false",
        rule: Rule::Boolean,
        support: Support::Inert { why: ONE_NODE },
    },
];

/// The definition of topic config `name`.
pub fn topic_config(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The topic config whose broker synonym is `broker_name`.
pub fn topic_config_of_synonym(broker_name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS
        .iter()
        .find(|d| d.synonym == Some(broker_name))
}

/// Checks a whole set of topic overrides; their normal forms, or (INVALID_CONFIG, message).
pub fn check_topic_configs(
    configs: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (name, value) in configs {
        let def = topic_config(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
        out.insert(name.clone(), def.check(value)?);
    }
    Ok(out)
}

/// Like [`check_topic_configs`], for a cluster member: `min.insync.replicas` is honoured there
/// (any value from 1; a value above a partition's in-sync replicas refuses acks=all produces
/// with NOT_ENOUGH_REPLICAS, as Kafka does), while a single node accepts only 1.
pub fn check_cluster_topic_configs(
    configs: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    const NAME: &str = "min.insync.replicas";
    let Some(value) = configs.get(NAME) else {
        return check_topic_configs(configs);
    };
    let n: i64 = value.trim().parse().map_err(|_| {
        format!("Invalid value {value} for configuration {NAME}: Not a number of type INT")
    })?;
    if !(1..=INT_MAX).contains(&n) {
        return Err(format!(
            "Invalid value {value} for configuration {NAME}: Value must be at least 1"
        ));
    }
    let mut rest = configs.clone();
    rest.remove(NAME);
    let mut out = check_topic_configs(&rest)?;
    out.insert(NAME.to_string(), n.to_string());
    Ok(out)
}

/// Broker configs set at runtime (AlterConfigs / IncrementalAlterConfigs on a BROKER
/// resource), persisted as `meta/broker-configs.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicBrokerConfigs {
    /// Cluster-wide defaults (resource name "").
    #[serde(default)]
    pub cluster: BTreeMap<String, String>,
    /// This broker's own (resource name = its node id).
    #[serde(default)]
    pub broker: BTreeMap<String, String>,
}

fn dynamic_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("broker-configs.json")
}

impl DynamicBrokerConfigs {
    /// Loads the persisted configs (none when the file does not exist).
    pub fn load(data_dir: &Path) -> io::Result<DynamicBrokerConfigs> {
        let path = dynamic_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DynamicBrokerConfigs::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, data_dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(data_dir.join("meta"))?;
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        ringbroker_storage::atomic_file::write_atomically(&dynamic_path(data_dir), &bytes)
    }

    /// The dynamic value of broker config `name` and its source.
    pub fn get(&self, name: &str) -> Option<(&str, ConfigSource)> {
        if let Some(v) = self.broker.get(name) {
            return Some((v, ConfigSource::DynamicBroker));
        }
        self.cluster
            .get(name)
            .map(|v| (v.as_str(), ConfigSource::DynamicDefaultBroker))
    }
}

/// What a broker runs with: its static settings and its dynamic configs.
#[derive(Clone, Copy)]
pub struct BrokerView<'a> {
    pub config: &'a BrokerConfig,
    pub dynamic: &'a DynamicBrokerConfigs,
}

fn limit_or_minus_one(v: Option<u64>) -> String {
    v.map_or_else(|| "-1".to_string(), |n| n.to_string())
}

/// The static (flag) value of a broker config that is a topic config's synonym, when this
/// broker has a flag for it.
pub fn static_broker_value(config: &BrokerConfig, broker_name: &str) -> Option<String> {
    Some(match broker_name {
        "log.retention.ms" => limit_or_minus_one(config.log.retention_ms),
        "log.retention.bytes" => limit_or_minus_one(config.log.retention_bytes),
        "log.segment.bytes" => config.log.segment_bytes.to_string(),
        "log.roll.ms" => config
            .log
            .segment_ms
            .map_or_else(|| LONG_MAX_STR.to_string(), |n| n.to_string()),
        "log.index.interval.bytes" => config.log.index_interval_bytes.to_string(),
        "message.max.bytes" => config.message_bytes_max.to_string(),
        _ => return None,
    })
}

/// One layer of a config's value, as DescribeConfigs lists synonyms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
}

/// Every layer of topic config `def` for a topic with `overrides`, the one in effect first.
/// The last is always the default.
pub fn topic_layers(
    def: &TopicConfigDef,
    overrides: &BTreeMap<String, String>,
    broker: BrokerView<'_>,
) -> Vec<Layer> {
    let mut layers = Vec::new();
    if let Some(v) = overrides.get(def.name) {
        layers.push(Layer {
            name: def.name.into(),
            value: v.clone(),
            source: ConfigSource::DynamicTopic,
        });
    }
    let Some(synonym) = def.synonym else {
        layers.push(Layer {
            name: def.name.into(),
            value: def.default.into(),
            source: ConfigSource::Default,
        });
        return layers;
    };
    layers.extend(broker_layers(synonym, def.default, broker));
    layers
}

/// The layers of broker config `name` (dynamic per broker, dynamic cluster default, static,
/// default `default`).
pub fn broker_layers(name: &str, default: &str, broker: BrokerView<'_>) -> Vec<Layer> {
    let mut layers = Vec::new();
    let layer = |value: &str, source| Layer {
        name: name.into(),
        value: value.into(),
        source,
    };
    if let Some(v) = broker.dynamic.broker.get(name) {
        layers.push(layer(v, ConfigSource::DynamicBroker));
    }
    if let Some(v) = broker.dynamic.cluster.get(name) {
        layers.push(layer(v, ConfigSource::DynamicDefaultBroker));
    }
    match static_broker_value(broker.config, name) {
        Some(v) if v != default => layers.push(layer(&v, ConfigSource::StaticBroker)),
        _ => {}
    }
    layers.push(layer(default, ConfigSource::Default));
    layers
}

/// The value in effect of topic config `name` without allocating when it is set dynamically.
fn effective<'a>(
    name: &str,
    overrides: &'a BTreeMap<String, String>,
    broker: BrokerView<'a>,
) -> Option<Cow<'a, str>> {
    let def = topic_config(name)?;
    if let Some(v) = overrides.get(name) {
        return Some(Cow::Borrowed(v));
    }
    let Some(synonym) = def.synonym else {
        return Some(Cow::Borrowed(def.default));
    };
    if let Some((v, _)) = broker.dynamic.get(synonym) {
        return Some(Cow::Borrowed(v));
    }
    Some(static_broker_value(broker.config, synonym).map_or(Cow::Borrowed(def.default), Cow::Owned))
}

fn effective_i64(name: &str, overrides: &BTreeMap<String, String>, broker: BrokerView<'_>) -> i64 {
    let parsed = effective(name, overrides, broker).and_then(|v| v.trim().parse().ok());
    parsed.unwrap_or_else(|| {
        topic_config(name)
            .and_then(|d| d.default.parse().ok())
            .unwrap_or(i64::MAX)
    })
}

/// What a Produce to a topic checks and does; each shard derives it when the topic's or the
/// broker's configs change (`Shard::produce_settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicProduceSettings {
    pub message_bytes_max: usize,
    /// `message.timestamp.type=LogAppendTime`: the broker stamps batches.
    pub log_append_time: bool,
    /// CreateTime batches may be at most this much older than the broker's clock.
    pub timestamp_before_ms_max: i64,
    /// CreateTime batches may be at most this much newer than the broker's clock.
    pub timestamp_after_ms_max: i64,
    /// `compact` in `cleanup.policy`: a record without a key is refused (INVALID_RECORD).
    pub keys_required: bool,
}

impl TopicProduceSettings {
    pub fn of(
        overrides: &BTreeMap<String, String>,
        broker: BrokerView<'_>,
    ) -> TopicProduceSettings {
        // The common case, on every Produce: nothing set anywhere but the broker's flags.
        if overrides.is_empty()
            && broker.dynamic.cluster.is_empty()
            && broker.dynamic.broker.is_empty()
        {
            return TopicProduceSettings {
                message_bytes_max: broker.config.message_bytes_max,
                log_append_time: false,
                timestamp_before_ms_max: i64::MAX,
                timestamp_after_ms_max: i64::MAX,
                keys_required: false,
            };
        }
        let difference = effective_i64("message.timestamp.difference.max.ms", overrides, broker);
        // Kafka 3.6+: before/after left at their default fall back to the deprecated difference.
        let bound = |name| match effective_i64(name, overrides, broker) {
            i64::MAX => difference,
            n => n,
        };
        TopicProduceSettings {
            message_bytes_max: usize::try_from(effective_i64(
                "max.message.bytes",
                overrides,
                broker,
            ))
            .unwrap_or(broker.config.message_bytes_max),
            log_append_time: effective("message.timestamp.type", overrides, broker)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("LogAppendTime")),
            timestamp_before_ms_max: bound("message.timestamp.before.max.ms"),
            timestamp_after_ms_max: bound("message.timestamp.after.max.ms"),
            keys_required: effective("cleanup.policy", overrides, broker)
                .is_some_and(|v| v.split(',').any(|p| p.trim() == "compact")),
        }
    }
}

/// How a topic's old records go (`cleanup.policy` and the compaction configs), checked as
/// Kafka's `LogConfig.validateValues` checks them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopicCleanSettings {
    /// `compact` in the policy: the cleaner keeps the latest record of each key.
    pub compact: bool,
    /// `delete` in the policy: retention.ms/retention.bytes delete whole old segments.
    pub delete: bool,
    pub delete_retention_ms: i64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    pub min_cleanable_dirty_ratio: f64,
}

impl TopicCleanSettings {
    pub fn of(
        overrides: &BTreeMap<String, String>,
        broker: BrokerView<'_>,
    ) -> Result<TopicCleanSettings, String> {
        let checked = |name: &str| -> Result<String, String> {
            let v = effective(name, overrides, broker).unwrap_or(Cow::Borrowed(""));
            topic_config(name).expect("registered").check(&v)
        };
        let long = |name: &str| -> Result<i64, String> {
            checked(name)?
                .parse::<i64>()
                .map_err(|_| format!("{name} is not a number"))
        };
        let policy = checked("cleanup.policy")?;
        let min_compaction_lag_ms = long("min.compaction.lag.ms")?;
        let max_compaction_lag_ms = long("max.compaction.lag.ms")?;
        if min_compaction_lag_ms > max_compaction_lag_ms {
            return Err(format!(
                "conflict topic config setting min.compaction.lag.ms ({min_compaction_lag_ms}) > max.compaction.lag.ms ({max_compaction_lag_ms})"
            ));
        }
        Ok(TopicCleanSettings {
            compact: policy.split(',').any(|p| p == "compact"),
            delete: policy.split(',').any(|p| p == "delete"),
            delete_retention_ms: long("delete.retention.ms")?,
            min_compaction_lag_ms,
            max_compaction_lag_ms,
            min_cleanable_dirty_ratio: checked("min.cleanable.dirty.ratio")?
                .parse::<f64>()
                .map_err(|_| "min.cleanable.dirty.ratio is not a number".to_string())?,
        })
    }
}

/// The log settings of a topic: its overrides, else the broker's dynamic and static configs.
/// `-1` means unlimited for `retention.ms`/`retention.bytes`, as in Kafka; a policy without
/// `delete` (`compact` alone) deletes nothing by age or size. Names this registry does not
/// know are skipped (older releases stored them).
pub fn topic_log_config(
    overrides: &BTreeMap<String, String>,
    broker: BrokerView<'_>,
) -> Result<ringbroker_storage::LogConfig, String> {
    let mut log = broker.config.log.clone();
    let value = |name: &str| -> Result<i64, String> {
        let v = effective(name, overrides, broker).unwrap_or(Cow::Borrowed(""));
        let def = topic_config(name).expect("registered");
        def.check(&v)?
            .parse::<i64>()
            .map_err(|_| format!("{name}={v} is not a number"))
    };
    let limit = |n: i64| u64::try_from(n).ok();
    log.retention_ms = limit(value("retention.ms")?);
    log.retention_bytes = limit(value("retention.bytes")?);
    log.segment_bytes = limit(value("segment.bytes")?).unwrap_or(log.segment_bytes);
    log.segment_ms = match value("segment.ms")? {
        i64::MAX => None,
        n => limit(n),
    };
    log.index_interval_bytes =
        limit(value("index.interval.bytes")?).unwrap_or(log.index_interval_bytes);
    value("max.message.bytes")?;
    let clean = TopicCleanSettings::of(overrides, broker)?;
    if !clean.delete {
        log.retention_ms = None;
        log.retention_bytes = None;
    }
    if clean.compact && clean.max_compaction_lag_ms < i64::MAX {
        // As Kafka (KIP-354): a compacted topic's active segment rolls by max.compaction.lag.ms
        // too, or a quiet topic's records would never reach a cleanable segment.
        let lag_ms = clean.max_compaction_lag_ms as u64;
        log.segment_ms = Some(log.segment_ms.map_or(lag_ms, |ms| ms.min(lag_ms)));
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> BrokerConfig {
        BrokerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            PathBuf::from("/nonexistent"),
            vec![0],
        )
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn registry_is_sorted_unique_and_defaults_validate() {
        for w in TOPIC_CONFIGS.windows(2) {
            assert!(w[0].name < w[1].name, "{} then {}", w[0].name, w[1].name);
        }
        for d in TOPIC_CONFIGS {
            if !d.default.is_empty() || !matches!(d.rule, Rule::ThrottledReplicas) {
                assert_eq!(d.check(d.default).as_deref(), Ok(d.default), "{}", d.name);
            }
        }
    }

    #[test]
    fn unknown_names_and_bad_values_are_refused_naming_the_key() {
        let e = check_topic_configs(&map(&[("dummy.doesntexist", "1")])).unwrap_err();
        assert!(e.contains("dummy.doesntexist"), "{e}");
        let e = check_topic_configs(&map(&[("retention.ms", "soon")])).unwrap_err();
        assert!(e.contains("retention.ms"), "{e}");
        let e = check_topic_configs(&map(&[("compression.type", "zstd")])).unwrap_err();
        assert!(e.contains("compression.type"), "{e}");
        let e = check_topic_configs(&map(&[("min.insync.replicas", "2")])).unwrap_err();
        assert!(e.contains("min.insync.replicas"), "{e}");
        assert!(check_topic_configs(&map(&[("cleanup.policy", "bogus")])).is_err());
    }

    #[test]
    fn a_cluster_honours_min_insync_replicas_and_a_single_node_only_takes_1() {
        let two = map(&[("min.insync.replicas", " 2"), ("retention.ms", "1000")]);
        assert!(check_topic_configs(&two).is_err());
        let ok = check_cluster_topic_configs(&two).unwrap();
        assert_eq!(ok["min.insync.replicas"], "2");
        assert_eq!(ok["retention.ms"], "1000");
        for bad in ["0", "-1", "two"] {
            let e = check_cluster_topic_configs(&map(&[("min.insync.replicas", bad)])).unwrap_err();
            assert!(e.contains("min.insync.replicas"), "{e}");
        }
        assert!(check_cluster_topic_configs(&map(&[("retention.ms", "soon")])).is_err());
    }

    #[test]
    fn values_equal_to_what_the_broker_does_are_accepted() {
        let ok = check_topic_configs(&map(&[
            ("cleanup.policy", " delete "),
            ("compression.type", "producer"),
            ("min.insync.replicas", "1"),
            ("unclean.leader.election.enable", "TRUE"),
            ("message.timestamp.type", "LogAppendTime"),
            ("retention.ms", "-1"),
        ]))
        .unwrap();
        assert_eq!(ok["cleanup.policy"], "delete");
        assert_eq!(ok["unclean.leader.election.enable"], "true");
    }

    #[test]
    fn layers_follow_topic_then_dynamic_then_static_then_default() {
        let mut config = broker();
        config.log.retention_ms = Some(1000);
        let mut dynamic = DynamicBrokerConfigs::default();
        let view = |d: &DynamicBrokerConfigs| -> Vec<ConfigSource> {
            let def = topic_config("retention.ms").unwrap();
            topic_layers(
                def,
                &map(&[("retention.ms", "5")]),
                BrokerView {
                    config: &config,
                    dynamic: d,
                },
            )
            .iter()
            .map(|l| l.source)
            .collect()
        };
        assert_eq!(
            view(&dynamic),
            vec![
                ConfigSource::DynamicTopic,
                ConfigSource::StaticBroker,
                ConfigSource::Default
            ]
        );
        dynamic
            .cluster
            .insert("log.retention.ms".into(), "7".into());
        dynamic.broker.insert("log.retention.ms".into(), "8".into());
        assert_eq!(view(&dynamic).len(), 5);
        let log = topic_log_config(
            &BTreeMap::new(),
            BrokerView {
                config: &config,
                dynamic: &dynamic,
            },
        )
        .unwrap();
        assert_eq!(log.retention_ms, Some(8));
    }

    #[test]
    fn compaction_configs_are_honoured_and_checked_as_kafka_checks_them() {
        let config = broker();
        let dynamic = DynamicBrokerConfigs::default();
        let b = BrokerView {
            config: &config,
            dynamic: &dynamic,
        };
        for (given, normal) in [
            ("compact", "compact"),
            ("compact,delete", "compact,delete"),
            ("delete, compact", "delete,compact"),
        ] {
            let ok = check_topic_configs(&map(&[("cleanup.policy", given)])).unwrap();
            assert_eq!(ok["cleanup.policy"], normal);
        }
        for bad in [
            ("min.cleanable.dirty.ratio", "1.5"),
            ("min.cleanable.dirty.ratio", "-0.1"),
            ("min.compaction.lag.ms", "-1"),
            ("max.compaction.lag.ms", "0"),
            ("delete.retention.ms", "-1"),
        ] {
            let e = check_topic_configs(&map(&[bad])).unwrap_err();
            assert!(e.contains(bad.0), "{e}");
        }
        let e = topic_log_config(
            &map(&[
                ("min.compaction.lag.ms", "10"),
                ("max.compaction.lag.ms", "5"),
            ]),
            b,
        )
        .unwrap_err();
        assert!(e.contains("min.compaction.lag.ms"), "{e}");

        // compact alone: retention deletes nothing; compact,delete: both apply.
        let retention = [("retention.ms", "1000"), ("retention.bytes", "5000")];
        let compact = [retention.as_slice(), &[("cleanup.policy", "compact")]].concat();
        let log = topic_log_config(&map(&compact), b).unwrap();
        assert_eq!((log.retention_ms, log.retention_bytes), (None, None));
        let both = [
            retention.as_slice(),
            &[("cleanup.policy", "compact,delete")],
        ]
        .concat();
        let log = topic_log_config(&map(&both), b).unwrap();
        assert_eq!(
            (log.retention_ms, log.retention_bytes),
            (Some(1000), Some(5000))
        );
        let s = TopicCleanSettings::of(&map(&both), b).unwrap();
        assert!(s.compact && s.delete);
        // A compacted topic's active segment rolls by max.compaction.lag.ms too (KIP-354).
        let lag = [
            ("cleanup.policy", "compact"),
            ("max.compaction.lag.ms", "1000"),
        ];
        assert_eq!(
            topic_log_config(&map(&lag), b).unwrap().segment_ms,
            Some(1000)
        );
        let lag_and_roll = [lag.as_slice(), &[("segment.ms", "500")]].concat();
        assert_eq!(
            topic_log_config(&map(&lag_and_roll), b).unwrap().segment_ms,
            Some(500)
        );
        let not_compacted = [("max.compaction.lag.ms", "1000")];
        assert_eq!(
            topic_log_config(&map(&not_compacted), b)
                .unwrap()
                .segment_ms,
            None
        );
        assert_eq!(s.min_cleanable_dirty_ratio, 0.5);
        assert_eq!(s.delete_retention_ms, 86_400_000);
        let s = TopicCleanSettings::of(&BTreeMap::new(), b).unwrap();
        assert!(!s.compact && s.delete);
        // The broker synonym log.cleanup.policy applies to topics without an override.
        let mut dynamic = DynamicBrokerConfigs::default();
        dynamic
            .cluster
            .insert("log.cleanup.policy".into(), "compact".into());
        let b = BrokerView {
            config: &config,
            dynamic: &dynamic,
        };
        assert!(TopicCleanSettings::of(&BTreeMap::new(), b).unwrap().compact);
        assert_eq!(
            topic_log_config(&map(&retention), b).unwrap().retention_ms,
            None
        );
    }

    #[test]
    fn produce_settings_resolve_timestamp_bounds() {
        let config = broker();
        let dynamic = DynamicBrokerConfigs::default();
        let b = BrokerView {
            config: &config,
            dynamic: &dynamic,
        };
        let s = TopicProduceSettings::of(&BTreeMap::new(), b);
        assert_eq!(s.message_bytes_max, config.message_bytes_max);
        assert!(!s.log_append_time);
        assert_eq!(s.timestamp_before_ms_max, i64::MAX);
        let s = TopicProduceSettings::of(
            &map(&[
                ("message.timestamp.difference.max.ms", "10"),
                ("message.timestamp.after.max.ms", "20"),
                ("message.timestamp.type", "LogAppendTime"),
            ]),
            b,
        );
        assert_eq!(
            (s.timestamp_before_ms_max, s.timestamp_after_ms_max),
            (10, 20)
        );
        assert!(s.log_append_time);
    }
}
