//! The broker: shards, connections, Kafka APIs, topic metadata.
//!
//! - [`config`]: everything a broker is started with.
//! - [`metadata`]: the topic table (names, ids, partition owners), persisted under `meta/`.
//! - [`server`]: start-up (lock the data dir, bind listeners, start and pin one shard thread per
//!   CPU) and orderly shutdown.
//! - [`shard`]: one shard's state (its view of the topic table, the partitions it owns: each
//!   a `Partition` holding its log and its producer state) and the cross-shard operations.
//! - [`producer_state`]: idempotent producers: ids, and per partition the sequences checked
//!   and reserved before an append.
//! - [`connection`]: one client connection: frames in, responses out in request order.
//! - [`api`]: one module per Kafka API, plus the table of versions we advertise.
//! - [`errors`]: Kafka error codes used here.
//! - [`acl`]: ACL operation codes and the authorized-operations bitfields (no authorizer yet).
//! - [`topic_config`]: every topic config Kafka documents (type, default, broker synonym,
//!   validator, whether this broker acts on it), how a topic's value resolves, and the broker
//!   configs set at runtime.
//! - [`metrics`], [`http`], [`health`]: Prometheus metrics, the HTTP endpoint that serves them
//!   and `/health`, the shards' heartbeats.
//! - [`cleaner`]: the per-shard log cleaner of compacted topics (picks the dirtiest due
//!   partition, cleans it through the storage crate, counts what it did).
//! - [`replication`]: a partition's part in its replica set on this node (leader, follower or
//!   neither): follower fetching, the leader's view of its followers, the high watermark.
//! - [`security`]: listeners by security protocol, TLS, SASL and the authorizer (issue #16).
//! - [`faults`]: fault injection for the fail-stop tests (inert unless an env var is set).
//!
//! Flow of a Produce: the connection's shard decodes and validates, then each partition's
//! batch goes to its owner shard (a mesh message carrying the `Bytes` slice of the receive
//! buffer), which appends it through its own ring and answers.

pub mod acl;
pub mod api;
pub mod cleaner;
pub mod config;
pub mod connection;
pub mod errors;
pub mod faults;
pub mod groups;
pub mod health;
pub mod http;
pub mod limits;
pub mod metadata;
pub mod metrics;
pub mod producer_state;
pub mod replication;
pub mod security;
pub mod server;
pub mod shard;
pub mod stats;
pub mod topic_config;
