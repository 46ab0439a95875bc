//! Connections of one CLI run and the routing Kafka asks for: topic changes go to the
//! controller, partition reads and writes to the partition's leader, group requests to the
//! group's coordinator, everything else to the first bootstrap broker that answered.
//!
//! Kafka error codes become [`KafkaError`], named as Kafka names them
//! (`TOPIC_ALREADY_EXISTS (36): ...`); the names come from `kafka_protocol::ResponseError`.

use crate::client::sasl::is_authentication_failure;
use crate::client::{Client, ClientSecurity, CLI_CLIENT_ID};
use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::messages::{
    find_coordinator_request::FindCoordinatorRequest, metadata_request::MetadataRequestTopic,
    ApiKey, FindCoordinatorResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Versions this CLI speaks, per API (inclusive); [`Client::version`] picks the highest one
/// the broker supports too. The caps mark where Kafka replaced topic names by topic ids
/// (Produce v13, Fetch v13, OffsetFetch v10, OffsetCommit v10), which this CLI does not send.
pub mod versions {
    pub const METADATA: (i16, i16) = (4, 13);
    pub const CREATE_TOPICS: (i16, i16) = (2, 7);
    pub const DELETE_TOPICS: (i16, i16) = (1, 6);
    pub const CREATE_PARTITIONS: (i16, i16) = (0, 3);
    pub const DELETE_RECORDS: (i16, i16) = (0, 2);
    pub const DESCRIBE_CONFIGS: (i16, i16) = (1, 4);
    pub const INCREMENTAL_ALTER_CONFIGS: (i16, i16) = (0, 1);
    pub const LIST_OFFSETS: (i16, i16) = (1, 10);
    pub const PRODUCE: (i16, i16) = (3, 12);
    pub const FETCH: (i16, i16) = (4, 12);
    pub const FIND_COORDINATOR: (i16, i16) = (0, 4);
    pub const LIST_GROUPS: (i16, i16) = (0, 5);
    pub const DESCRIBE_GROUPS: (i16, i16) = (0, 6);
    pub const OFFSET_FETCH: (i16, i16) = (2, 9);
    pub const OFFSET_COMMIT: (i16, i16) = (2, 9);
    pub const DELETE_GROUPS: (i16, i16) = (0, 2);
    pub const DESCRIBE_CLUSTER: (i16, i16) = (0, 2);
    pub const ALTER_PARTITION_REASSIGNMENTS: (i16, i16) = (0, 1);
    pub const LIST_PARTITION_REASSIGNMENTS: (i16, i16) = (0, 0);
}

/// How long the broker may take for topic changes (CreateTopics, DeleteTopics, ...).
pub const ADMIN_TIMEOUT_MS: i32 = 30_000;

/// A Kafka error code answered by the broker, with what it was about.
#[derive(Debug, Clone)]
pub struct KafkaError {
    pub code: i16,
    /// What the request was about, and the broker's own message when it sent one.
    pub message: String,
}

impl KafkaError {
    pub fn new(code: i16, what: impl Into<String>, server_message: Option<&StrBytes>) -> Self {
        let mut message = what.into();
        if let Some(m) = server_message.map(|m| m.as_str().trim()) {
            // The broker's own message, alone when it already names the subject (the first
            // quoted name of `what`) as a word of its own.
            let subject = message.split('"').nth(1).filter(|s| !s.is_empty());
            let names_it = |s: &str| {
                m.split(|c: char| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-')))
                    .any(|word| word == s)
            };
            message = match subject {
                _ if m.is_empty() => message,
                Some(s) if names_it(s) => m.to_string(),
                _ => format!("{message}: {m}"),
            };
        }
        KafkaError { code, message }
    }

    pub fn name(&self) -> String {
        error_name(self.code)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code, "name": self.name(), "message": self.message })
    }
}

impl std::fmt::Display for KafkaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.name(), self.code, self.message)
    }
}

impl std::error::Error for KafkaError {}

/// `Ok` for code 0, else the error.
pub fn check(code: i16, what: impl FnOnce() -> String, server: Option<&StrBytes>) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(KafkaError::new(code, what(), server).into())
}

/// Kafka's name of an error code (`TOPIC_ALREADY_EXISTS`), `UNKNOWN_CODE` for one that
/// kafka-protocol does not know.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(_)) => "UNKNOWN_CODE".to_string(),
        // The variants are Kafka's names in CamelCase: TopicAlreadyExists.
        Some(e) => screaming_snake(&format!("{e:?}")),
    }
}

fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A broker as Metadata lists it.
#[derive(Debug, Clone)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One partition as Metadata lists it.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error_code: i16,
}

#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub name: String,
    pub error_code: i16,
    pub internal: bool,
    /// By partition index.
    pub partitions: Vec<PartitionInfo>,
}

/// A Metadata answer, reduced to what the CLI shows.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: Vec<TopicInfo>,
}

impl ClusterInfo {
    fn from_response(r: MetadataResponse) -> ClusterInfo {
        let brokers = r
            .brokers
            .iter()
            .map(|b| {
                (
                    b.node_id.0,
                    BrokerInfo {
                        node_id: b.node_id.0,
                        host: b.host.to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.to_string()),
                    },
                )
            })
            .collect();
        let mut topics: Vec<TopicInfo> = r
            .topics
            .iter()
            .map(|t| {
                let mut partitions: Vec<PartitionInfo> = t
                    .partitions
                    .iter()
                    .map(|p| PartitionInfo {
                        partition: p.partition_index,
                        leader: p.leader_id.0,
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                        error_code: p.error_code,
                    })
                    .collect();
                partitions.sort_by_key(|p| p.partition);
                TopicInfo {
                    name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    error_code: t.error_code,
                    internal: t.is_internal,
                    partitions,
                }
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterInfo {
            cluster_id: r.cluster_id.as_ref().map(|c| c.to_string()),
            controller_id: r.controller_id.0,
            brokers,
            topics,
        }
    }

    /// The topic, or UNKNOWN_TOPIC_OR_PARTITION / the topic's own error.
    pub fn topic(&self, name: &str) -> Result<&TopicInfo> {
        let t = self
            .topics
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| KafkaError::new(3, format!("topic {name:?}"), None))?;
        check(t.error_code, || format!("topic {name:?}"), None)?;
        Ok(t)
    }

    /// host:port of `node_id`.
    pub fn broker_addr(&self, node_id: i32) -> Result<String> {
        self.brokers
            .get(&node_id)
            .map(BrokerInfo::addr)
            .ok_or_else(|| anyhow!("broker {node_id} is not listed in Metadata"))
    }
}

/// The connections of one CLI run, by address.
pub struct Admin {
    bootstrap_addr: String,
    clients: BTreeMap<String, Client>,
    security: Arc<ClientSecurity>,
}

impl Admin {
    /// Connects to the first of the comma-separated `brokers` that accepts.
    /// Connections use `security` (TLS, SASL); an authentication failure ends the command
    /// at once (another bootstrap broker would refuse the same credentials).
    pub async fn connect(brokers: &str, security: Arc<ClientSecurity>) -> Result<Admin> {
        let mut errors = Vec::new();
        for addr in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Client::connect_as(addr, CLI_CLIENT_ID, &security).await {
                Ok(client) => {
                    let mut clients = BTreeMap::new();
                    clients.insert(addr.to_string(), client);
                    return Ok(Admin {
                        bootstrap_addr: addr.to_string(),
                        clients,
                        security,
                    });
                }
                Err(e) if is_authentication_failure(&e) => return Err(e),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if errors.is_empty() {
            bail!("no broker address given (-b/--brokers host:port[,host:port...])");
        }
        bail!(
            "could not connect to any broker ({}); is the broker running? (-b/--brokers, RINGBROKER_BROKERS)",
            errors.join("; ")
        )
    }

    /// The connection to `addr`, opened on first use.
    pub async fn at(&mut self, addr: &str) -> Result<&mut Client> {
        if !self.clients.contains_key(addr) {
            let client = Client::connect_as(addr, CLI_CLIENT_ID, &self.security).await?;
            self.clients.insert(addr.to_string(), client);
        }
        self.clients
            .get_mut(addr)
            .context("a connection just opened is missing")
    }

    /// The first bootstrap broker that accepted the connection.
    pub async fn any(&mut self) -> Result<&mut Client> {
        let addr = self.bootstrap_addr.clone();
        self.at(&addr).await
    }

    /// Negotiates `api` with the client at `addr` and sends the request `build(version)`.
    pub async fn call_at<Req: Encodable, Resp: Decodable>(
        &mut self,
        addr: &str,
        api: ApiKey,
        ours: (i16, i16),
        build: impl FnOnce(i16) -> Req,
    ) -> Result<(i16, Resp)> {
        let client = self.at(addr).await?;
        let version = client.version(api, ours).await?;
        let request = build(version);
        let response = client
            .call(api, version, &request)
            .await
            .with_context(|| format!("{api:?} v{version} to {addr}"))?;
        Ok((version, response))
    }

    /// Like [`Admin::call_at`], on the bootstrap connection.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        ours: (i16, i16),
        build: impl FnOnce(i16) -> Req,
    ) -> Result<(i16, Resp)> {
        let addr = self.bootstrap_addr.clone();
        self.call_at(&addr, api, ours, build).await
    }

    /// Whether the bootstrap broker advertises `api`.
    pub async fn supports(&mut self, api: ApiKey) -> Result<bool> {
        self.any().await?.supports(api).await
    }

    /// Metadata for `topics` (`None`: every topic), never creating one.
    pub async fn metadata(&mut self, topics: Option<&[String]>) -> Result<ClusterInfo> {
        let (_, response): (_, MetadataResponse) = self
            .call(ApiKey::Metadata, versions::METADATA, |_| {
                MetadataRequest::default()
                    .with_topics(topics.map(|ts| {
                        ts.iter()
                            .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                            .collect()
                    }))
                    .with_allow_auto_topic_creation(false)
            })
            .await?;
        check(response.error_code, || "Metadata".to_string(), None)?;
        Ok(ClusterInfo::from_response(response))
    }

    /// Where topic changes go: the controller Metadata names, else the bootstrap broker
    /// (KRaft brokers forward them; they name a random broker as the controller).
    pub async fn controller_addr(&mut self) -> Result<String> {
        let cluster = self.metadata(Some(&[])).await?;
        Ok(cluster
            .broker_addr(cluster.controller_id)
            .unwrap_or_else(|_| self.bootstrap_addr.clone()))
    }

    /// host:port of the coordinator of `group` (FindCoordinator).
    pub async fn coordinator_addr(&mut self, group: &str) -> Result<String> {
        let (version, r): (_, FindCoordinatorResponse) = self
            .call(ApiKey::FindCoordinator, versions::FIND_COORDINATOR, |v| {
                let request = FindCoordinatorRequest::default().with_key_type(0);
                if v >= 4 {
                    request.with_coordinator_keys(vec![str_bytes(group)])
                } else {
                    request.with_key(str_bytes(group))
                }
            })
            .await?;
        let what = || format!("finding the coordinator of group {group:?}");
        if version >= 4 {
            let c = r
                .coordinators
                .iter()
                .find(|c| c.key.as_str() == group)
                .with_context(|| format!("FindCoordinator answer does not mention {group:?}"))?;
            check(c.error_code, what, c.error_message.as_ref())?;
            Ok(BrokerInfo {
                node_id: c.node_id.0,
                host: c.host.to_string(),
                port: c.port,
                rack: None,
            }
            .addr())
        } else {
            check(r.error_code, what, r.error_message.as_ref())?;
            Ok(BrokerInfo {
                node_id: r.node_id.0,
                host: r.host.to_string(),
                port: r.port,
                rack: None,
            }
            .addr())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(25), "UNKNOWN_MEMBER_ID");
        assert_eq!(error_name(9999), "UNKNOWN_CODE");
        let e = KafkaError::new(
            36,
            "topic \"x\"",
            Some(&StrBytes::from_static_str("Topic 'x' already exists.")),
        );
        assert_eq!(
            e.to_string(),
            "TOPIC_ALREADY_EXISTS (36): Topic 'x' already exists."
        );
        let e = KafkaError::new(
            40,
            "topic \"x\"",
            Some(&StrBytes::from_static_str("bad value")),
        );
        assert_eq!(e.to_string(), "INVALID_CONFIG (40): topic \"x\": bad value");
        // A one-letter topic name inside other words does not count as named.
        let e = KafkaError::new(
            40,
            "topic \"t\"",
            Some(&StrBytes::from_static_str(
                "cleanup.policy=compact is refused",
            )),
        );
        assert_eq!(
            e.to_string(),
            "INVALID_CONFIG (40): topic \"t\": cleanup.policy=compact is refused"
        );
    }
}
