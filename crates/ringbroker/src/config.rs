//! Command line, environment and TOML settings, merged into a `BrokerConfig`.
//! Precedence: flags > `RINGBROKER_*` environment > `--config` file > defaults.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ringbroker_broker::config::{
    BrokerConfig, ClusterSettings, BROKER_HEARTBEAT_INTERVAL_DEFAULT,
    BROKER_SESSION_TIMEOUT_DEFAULT, DEFAULT_REPLICATION_FACTOR_MAX,
};
use ringbroker_broker::security;
use ringbroker_runtime::affinity;
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// The smallest share of `--cleaner-dedupe-buffer-bytes` a shard may get.
const CLEANER_MAP_BYTES_PER_SHARD_MIN: usize = 4096;

#[derive(Parser, Debug)]
#[command(
    name = "ringbroker",
    version,
    about = "A Kafka-compatible message broker, thread-per-core on io_uring"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of `Serve`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Load generator for any Kafka-compatible broker (produce, consume, e2e), and the
    /// benchmark report renderer.
    Bench(crate::bench::BenchArgs),
    /// Create, list, describe, configure, grow, trim and delete topics.
    Topic(crate::cli::TopicArgs),
    /// List and describe consumer groups (offsets, lag), reset their offsets, delete them.
    Group(crate::cli::GroupArgs),
    /// Cluster id, controller and brokers.
    Cluster(crate::cli::ClusterArgs),
    /// Write stdin lines to a topic, one record each; prints their offsets.
    Produce(crate::cli::ProduceArgs),
    /// Print a topic's record values; stops at the end it saw at the start unless --follow.
    Consume(crate::cli::ConsumeArgs),
    /// SCRAM users of a stopped broker's data directory (create before the first start,
    /// list, delete); a running broker takes AlterUserScramCredentials instead.
    User(crate::cli::user::UserArgs),
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Address to accept Kafka clients on (every shard listens here with SO_REUSEPORT).
    /// Port 0 picks a free port, printed in the start-up line. [default: 127.0.0.1:9092]
    #[arg(long, env = "RINGBROKER_LISTEN")]
    pub listen: Option<String>,

    /// Directory for partition logs and metadata; locked while the broker runs.
    /// [default: ./ringbroker-data]
    #[arg(long, env = "RINGBROKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// CPUs to run on, one pinned shard (thread + io_uring ring) per CPU, e.g. `0-3,6`.
    /// [default: every CPU this process may use]
    #[arg(long, env = "RINGBROKER_CORES")]
    pub cores: Option<String>,

    /// host:port that Metadata tells clients to connect to. [default: the listen address]
    #[arg(long, env = "RINGBROKER_ADVERTISE")]
    pub advertise: Option<String>,

    /// Create unknown topics when a client asks Metadata about them. [default: true]
    #[arg(long, env = "RINGBROKER_AUTO_CREATE_TOPICS", num_args = 0..=1, default_missing_value = "true")]
    pub auto_create_topics: Option<bool>,

    /// Partitions of an auto-created topic (and of CreateTopics asking for -1). [default: 1]
    #[arg(long, env = "RINGBROKER_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<i32>,

    /// When data reaches the disk: `acks` (fdatasync before answering acks=-1 produces, shared
    /// by concurrent requests), `always` (before answering any acks>0 produce), `interval=<ms>`
    /// (in the background), `never` (only at shutdown). [default: acks]
    #[arg(long, env = "RINGBROKER_FLUSH")]
    pub flush: Option<String>,

    /// Roll a partition's active segment at this size. [default: 1073741824 (1 GiB)]
    #[arg(long, env = "RINGBROKER_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,

    /// Roll a partition's active segment at this age, in ms. [default: none]
    #[arg(long, env = "RINGBROKER_SEGMENT_MS")]
    pub segment_ms: Option<u64>,

    /// Delete whole segments whose newest record is older than this, in ms; -1 keeps them
    /// forever. [default: 604800000 (7 days)]
    #[arg(long, env = "RINGBROKER_RETENTION_MS", allow_hyphen_values = true)]
    pub retention_ms: Option<i64>,

    /// Delete the oldest segments while a partition still holds this many bytes without them;
    /// -1: no size limit. [default: -1]
    #[arg(long, env = "RINGBROKER_RETENTION_BYTES", allow_hyphen_values = true)]
    pub retention_bytes: Option<i64>,

    /// How often retention runs, in ms. [default: 60000]
    #[arg(long, env = "RINGBROKER_RETENTION_CHECK_MS")]
    pub retention_check_ms: Option<u64>,

    /// How often each partition's recovery checkpoint is written, in ms: after a crash,
    /// start-up scans only what follows it. [default: 5000]
    #[arg(long, env = "RINGBROKER_RECOVERY_CHECKPOINT_MS")]
    pub recovery_checkpoint_ms: Option<u64>,

    /// Turn off optional io_uring features (SINGLE_ISSUER/DEFER_TASKRUN/COOP_TASKRUN setup,
    /// MSG_RING wake-ups: eventfd instead) to run or test the fallback paths.
    #[arg(long, env = "RINGBROKER_URING_FALLBACK", num_args = 0..=1, default_missing_value = "true")]
    pub uring_fallback: Option<bool>,

    /// Address of the HTTP endpoint for Prometheus (`/metrics`) and health checks
    /// (`/health`), served by a thread off the shard cores; `off` disables it.
    /// [default: 127.0.0.1:9644]
    #[arg(long, env = "RINGBROKER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Client connections open at once (all shards); further connections are accepted and
    /// closed at once. [default: 10000]
    #[arg(long, env = "RINGBROKER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Largest request frame accepted; a larger size prefix closes the connection before
    /// anything is allocated. [default: 104857600 (100 MiB)]
    #[arg(long, env = "RINGBROKER_FRAME_BYTES_MAX")]
    pub frame_bytes_max: Option<usize>,

    /// Largest record batch a Produce may carry (Kafka's `max.message.bytes`); larger ones
    /// get MESSAGE_TOO_LARGE. At most 268435456 (one Fetch record section). [default: 1048588]
    #[arg(long, env = "RINGBROKER_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,

    /// Record bytes one Fetch response carries at most (Kafka's `fetch.max.bytes`); a
    /// client's larger `fetch.max.bytes`/`max.partition.fetch.bytes` are clamped to it, and
    /// the first batch is always whole (KIP-74). At most 268435456. [default: 57671680]
    #[arg(long, env = "RINGBROKER_FETCH_MAX_BYTES")]
    pub fetch_max_bytes: Option<usize>,

    /// Receive-buffer bytes per shard for frames larger than 64 KiB (Kafka's
    /// `queued.max.request.bytes`); a connection waits for space. [default: 536870912]
    #[arg(long, env = "RINGBROKER_RECV_BUDGET_BYTES")]
    pub recv_budget_bytes: Option<usize>,

    /// Members one consumer group may have (Kafka's `group.max.size`); a JoinGroup beyond it
    /// gets GROUP_MAX_SIZE_REACHED. Between 1 and 1000. [default: 1000]
    #[arg(long, env = "RINGBROKER_GROUP_MAX_SIZE")]
    pub group_max_size: Option<usize>,

    /// Run the log cleaner of compacted topics (Kafka's `log.cleaner.enable`): one per shard,
    /// for the partitions that shard owns. [default: true]
    #[arg(long, env = "RINGBROKER_LOG_CLEANER_ENABLE", num_args = 0..=1, default_missing_value = "true")]
    pub log_cleaner_enable: Option<bool>,

    /// How long a shard's cleaner sleeps between looks for a partition to clean, in ms
    /// (Kafka's `log.cleaner.backoff.ms`). [default: 15000]
    #[arg(long, env = "RINGBROKER_CLEANER_BACKOFF_MS")]
    pub cleaner_backoff_ms: Option<u64>,

    /// Memory for the cleaners' key→offset maps, all shards together (Kafka's
    /// `log.cleaner.dedupe.buffer.size`); each shard gets an equal share, as each Kafka cleaner
    /// thread does. A log with more keys than a share holds is cleaned in several passes.
    /// [default: 134217728 (128 MiB)]
    #[arg(long, env = "RINGBROKER_CLEANER_DEDUPE_BUFFER_BYTES")]
    pub cleaner_dedupe_buffer_bytes: Option<usize>,

    /// Bytes a cleaner reads and writes before it yields to the shard's requests.
    /// [default: 1048576]
    #[arg(long, env = "RINGBROKER_CLEANER_IO_BYTES_PER_TURN")]
    pub cleaner_io_bytes_per_turn: Option<usize>,

    /// Share of a shard's time its cleaner may take, in percent (1-100): after each slice of
    /// `--cleaner-io-bytes-per-turn` bytes the cleaner pauses so that its slices take at most
    /// this share of the wall clock; 100 = only yield between slices. [default: 20]
    #[arg(long, env = "RINGBROKER_CLEANER_DUTY_PERCENT")]
    pub cleaner_duty_percent: Option<u32>,

    /// This broker's id in the cluster (with --cluster). An id that is not one of the voters
    /// listed there adds a broker to a running cluster: it joins the metadata quorum as a
    /// learner (it follows the metadata, it does not vote) and needs --internal-listen.
    /// [default: 0, a single node]
    #[arg(long, env = "RINGBROKER_NODE_ID")]
    pub node_id: Option<i32>,

    /// Run as one node of a cluster: the metadata quorum's voters and the broker-to-broker
    /// address of each, `id@host:port,...` (every broker of the cluster, this one included).
    /// [default: none, a single node]
    #[arg(long, env = "RINGBROKER_CLUSTER")]
    pub cluster: Option<String>,

    /// Address to accept broker-to-broker (quorum) connections on. [default: this node's
    /// address in --cluster]
    #[arg(long, env = "RINGBROKER_INTERNAL_LISTEN")]
    pub internal_listen: Option<String>,

    /// Replicas of a topic created with replication factor -1 (auto-created topics included)
    /// and of `__consumer_offsets`. [default: min(3, number of voters)]
    #[arg(long, env = "RINGBROKER_DEFAULT_REPLICATION_FACTOR")]
    pub default_replication_factor: Option<i16>,

    /// A broker the active controller has not heard from for this long, in ms, is fenced
    /// (leads nothing, leaves every ISR). [default: 2000]
    #[arg(long, env = "RINGBROKER_BROKER_SESSION_TIMEOUT_MS")]
    pub broker_session_timeout_ms: Option<u64>,

    /// How often this broker tells the active controller it is alive, in ms. [default: 250]
    #[arg(long, env = "RINGBROKER_BROKER_HEARTBEAT_INTERVAL_MS")]
    pub broker_heartbeat_interval_ms: Option<u64>,

    /// Listeners in Kafka's syntax, `NAME://host:port,...` (NAME: PLAINTEXT, SSL,
    /// SASL_PLAINTEXT, SASL_SSL, or a name given a protocol by
    /// --listener-security-protocol-map). Replaces --listen. [default: PLAINTEXT://127.0.0.1:9092]
    #[arg(long, env = "RINGBROKER_LISTENERS")]
    pub listeners: Option<String>,

    /// What Metadata tells clients per listener, `NAME://host:port,...`. Replaces --advertise.
    /// [default: each listener's bound address]
    #[arg(long, env = "RINGBROKER_ADVERTISED_LISTENERS")]
    pub advertised_listeners: Option<String>,

    /// Security protocol of custom listener names, `NAME:PROTOCOL,...` (Kafka's
    /// listener.security.protocol.map).
    #[arg(long, env = "RINGBROKER_LISTENER_SECURITY_PROTOCOL_MAP")]
    pub listener_security_protocol_map: Option<String>,

    /// PEM certificate chain of the broker (SSL and SASL_SSL listeners).
    #[arg(long, env = "RINGBROKER_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "RINGBROKER_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA certificate(s) client certificates must chain to: TLS clients must then present
    /// one (mTLS), and its subject becomes the connection's principal.
    #[arg(long, env = "RINGBROKER_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// What TLS listeners ask of clients (Kafka's ssl.client.auth): `required` (a certificate
    /// of --tls-client-ca-file), `requested` (one is checked if shown; without one the client
    /// is anonymous or authenticates with SASL) or `none`. [default: required with
    /// --tls-client-ca-file, else none]
    #[arg(long, env = "RINGBROKER_TLS_CLIENT_AUTH")]
    pub tls_client_auth: Option<String>,

    /// SASL mechanisms offered on SASL listeners, in order. [default: SCRAM-SHA-256,SCRAM-SHA-512,PLAIN]
    #[arg(long, env = "RINGBROKER_SASL_MECHANISMS")]
    pub sasl_mechanisms: Option<String>,

    /// Principals allowed everything, `User:admin,User:other` (`;` works too, as in Kafka).
    #[arg(long, env = "RINGBROKER_SUPER_USERS")]
    pub super_users: Option<String>,

    /// `acl` enforces ACLs (Kafka's authorizer.class.name); `none` allows everything.
    /// [default: none]
    #[arg(long, env = "RINGBROKER_AUTHORIZER")]
    pub authorizer: Option<String>,

    /// With --authorizer acl: a resource no ACL names is open to everyone (Kafka's
    /// allow.everyone.if.no.acl.found). [default: false]
    #[arg(long, env = "RINGBROKER_ALLOW_EVERYONE_IF_NO_ACL_FOUND", num_args = 0..=1, default_missing_value = "true")]
    pub allow_everyone_if_no_acl_found: Option<bool>,

    /// SASL sessions expire after this many ms and clients re-authenticate (KIP-368,
    /// connections.max.reauth.ms); 0: never. [default: 0]
    #[arg(long, env = "RINGBROKER_CONNECTIONS_MAX_REAUTH_MS")]
    pub connections_max_reauth_ms: Option<u64>,

    /// A failed authentication is answered this many ms late (Kafka's
    /// connection.failed.authentication.delay.ms). [default: 100]
    #[arg(long, env = "RINGBROKER_FAILED_AUTHENTICATION_DELAY_MS")]
    pub failed_authentication_delay_ms: Option<u64>,

    /// The listener other brokers fetch from (cluster mode). [default: the first listener]
    #[arg(long, env = "RINGBROKER_INTER_BROKER_LISTENER_NAME")]
    pub inter_broker_listener_name: Option<String>,

    /// SASL mechanism this broker authenticates with toward other brokers. [default: SCRAM-SHA-512]
    #[arg(long, env = "RINGBROKER_INTER_BROKER_SASL_MECHANISM")]
    pub inter_broker_sasl_mechanism: Option<String>,

    /// SASL user this broker authenticates as toward other brokers (make it a super user).
    #[arg(long, env = "RINGBROKER_INTER_BROKER_USER")]
    pub inter_broker_user: Option<String>,

    /// File holding the password of --inter-broker-user (first line).
    #[arg(long, env = "RINGBROKER_INTER_BROKER_PASSWORD_FILE")]
    pub inter_broker_password_file: Option<PathBuf>,

    /// PEM CA certificate(s) other brokers' server certificates must chain to (this broker's
    /// follower fetches on a TLS inter-broker listener). [default: --tls-client-ca-file]
    #[arg(long, env = "RINGBROKER_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// TOML file with the same keys (listen, data_dir, cores, advertise, auto_create_topics,
    /// default_partitions, flush, segment_bytes, segment_ms, retention_ms, retention_bytes,
    /// retention_check_ms, recovery_checkpoint_ms, uring_fallback, metrics_listen,
    /// max_connections, frame_bytes_max, max_message_bytes, fetch_max_bytes, recv_budget_bytes,
    /// group_max_size, log_cleaner_enable, cleaner_backoff_ms, cleaner_dedupe_buffer_bytes,
    /// cleaner_io_bytes_per_turn, cleaner_duty_percent, node_id, cluster, internal_listen,
    /// default_replication_factor, broker_session_timeout_ms, broker_heartbeat_interval_ms,
    /// listeners, advertised_listeners, listener_security_protocol_map, tls_cert_file,
    /// tls_key_file, tls_client_ca_file, tls_client_auth, sasl_mechanisms, super_users, authorizer,
    /// allow_everyone_if_no_acl_found, connections_max_reauth_ms,
    /// failed_authentication_delay_ms, inter_broker_listener_name,
    /// inter_broker_sasl_mechanism, inter_broker_user, inter_broker_password_file,
    /// tls_ca_file).
    #[arg(long, env = "RINGBROKER_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    cores: Option<String>,
    advertise: Option<String>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    flush: Option<String>,
    segment_bytes: Option<u64>,
    segment_ms: Option<u64>,
    retention_ms: Option<i64>,
    retention_bytes: Option<i64>,
    retention_check_ms: Option<u64>,
    recovery_checkpoint_ms: Option<u64>,
    uring_fallback: Option<bool>,
    metrics_listen: Option<String>,
    max_connections: Option<usize>,
    frame_bytes_max: Option<usize>,
    max_message_bytes: Option<usize>,
    fetch_max_bytes: Option<usize>,
    recv_budget_bytes: Option<usize>,
    group_max_size: Option<usize>,
    log_cleaner_enable: Option<bool>,
    cleaner_backoff_ms: Option<u64>,
    cleaner_dedupe_buffer_bytes: Option<usize>,
    cleaner_io_bytes_per_turn: Option<usize>,
    cleaner_duty_percent: Option<u32>,
    node_id: Option<i32>,
    cluster: Option<String>,
    internal_listen: Option<String>,
    default_replication_factor: Option<i16>,
    broker_session_timeout_ms: Option<u64>,
    broker_heartbeat_interval_ms: Option<u64>,
    listeners: Option<String>,
    advertised_listeners: Option<String>,
    listener_security_protocol_map: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_client_ca_file: Option<PathBuf>,
    tls_client_auth: Option<String>,
    sasl_mechanisms: Option<String>,
    super_users: Option<String>,
    authorizer: Option<String>,
    allow_everyone_if_no_acl_found: Option<bool>,
    connections_max_reauth_ms: Option<u64>,
    failed_authentication_delay_ms: Option<u64>,
    inter_broker_listener_name: Option<String>,
    inter_broker_sasl_mechanism: Option<String>,
    inter_broker_user: Option<String>,
    inter_broker_password_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
}

pub struct Settings {
    pub broker: BrokerConfig,
    pub uring_fallback: bool,
}

impl ServeArgs {
    pub fn resolve(self) -> Result<Settings> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("ringbroker-data"));
        let cores = match self.cores.or(file.cores) {
            Some(text) => affinity::parse_cpu_list(&text)
                .map_err(anyhow::Error::msg)
                .context("--cores")?,
            None => affinity::allowed_cpus().context("reading this process's CPU affinity")?,
        };
        let allowed = affinity::allowed_cpus().context("reading this process's CPU affinity")?;
        if let Some(cpu) = cores.iter().find(|c| !allowed.contains(c)) {
            bail!("--cores: CPU {cpu} is not available to this process (allowed: {allowed:?})");
        }
        let default_partitions = self
            .default_partitions
            .or(file.default_partitions)
            .unwrap_or(1);
        if default_partitions < 1 {
            bail!("--default-partitions must be at least 1");
        }
        let listen = self.listen.or(file.listen);
        let advertise = self.advertise.or(file.advertise);
        let mut broker = BrokerConfig::new(
            "127.0.0.1:9092".parse().expect("a literal address"),
            data_dir,
            cores,
        );
        broker.listeners = resolve_listeners(ListenerFlags {
            listen,
            advertise,
            listeners: self.listeners.or(file.listeners),
            advertised_listeners: self.advertised_listeners.or(file.advertised_listeners),
            protocol_map: self
                .listener_security_protocol_map
                .or(file.listener_security_protocol_map),
        })?;
        broker.security = resolve_security(
            SecurityFlags {
                tls_cert_file: self.tls_cert_file.or(file.tls_cert_file),
                tls_key_file: self.tls_key_file.or(file.tls_key_file),
                tls_client_ca_file: self.tls_client_ca_file.or(file.tls_client_ca_file),
                tls_client_auth: self.tls_client_auth.or(file.tls_client_auth),
                sasl_mechanisms: self.sasl_mechanisms.or(file.sasl_mechanisms),
                super_users: self.super_users.or(file.super_users),
                authorizer: self.authorizer.or(file.authorizer),
                allow_everyone_if_no_acl_found: self
                    .allow_everyone_if_no_acl_found
                    .or(file.allow_everyone_if_no_acl_found),
                connections_max_reauth_ms: self
                    .connections_max_reauth_ms
                    .or(file.connections_max_reauth_ms),
                failed_authentication_delay_ms: self
                    .failed_authentication_delay_ms
                    .or(file.failed_authentication_delay_ms),
                inter_broker_listener_name: self
                    .inter_broker_listener_name
                    .or(file.inter_broker_listener_name),
                inter_broker_sasl_mechanism: self
                    .inter_broker_sasl_mechanism
                    .or(file.inter_broker_sasl_mechanism),
                inter_broker_user: self.inter_broker_user.or(file.inter_broker_user),
                inter_broker_password_file: self
                    .inter_broker_password_file
                    .or(file.inter_broker_password_file),
                tls_ca_file: self.tls_ca_file.or(file.tls_ca_file),
            },
            &broker.listeners,
        )?;
        broker.auto_create_topics = self
            .auto_create_topics
            .or(file.auto_create_topics)
            .unwrap_or(true);
        broker.default_partitions = default_partitions;
        if let Some(b) = self.segment_bytes.or(file.segment_bytes) {
            if !(1024..=ringbroker_storage::SEGMENT_BYTES_MAX).contains(&b) {
                bail!(
                    "--segment-bytes must be between 1024 and {} (index positions are 32-bit)",
                    ringbroker_storage::SEGMENT_BYTES_MAX
                );
            }
            broker.log.segment_bytes = b;
        }
        if let Some(ms) = self.segment_ms.or(file.segment_ms) {
            broker.log.segment_ms = Some(ms.max(1));
        }
        if let Some(ms) = self.retention_ms.or(file.retention_ms) {
            broker.log.retention_ms = u64::try_from(ms).ok();
        }
        if let Some(b) = self.retention_bytes.or(file.retention_bytes) {
            broker.log.retention_bytes = u64::try_from(b).ok();
        }
        if let Some(ms) = self.retention_check_ms.or(file.retention_check_ms) {
            broker.retention_check_interval = std::time::Duration::from_millis(ms.max(10));
        }
        if let Some(ms) = self.recovery_checkpoint_ms.or(file.recovery_checkpoint_ms) {
            broker.recovery_checkpoint_interval = std::time::Duration::from_millis(ms.max(10));
        }
        if let Some(flush) = self.flush.or(file.flush) {
            broker.flush = flush.parse().map_err(anyhow::Error::msg)?;
        }
        let metrics_text = self
            .metrics_listen
            .or(file.metrics_listen)
            .unwrap_or_else(|| "127.0.0.1:9644".to_string());
        broker.metrics_listen = if metrics_text == "off" {
            None
        } else {
            Some(
                metrics_text
                    .to_socket_addrs()
                    .with_context(|| format!("--metrics-listen {metrics_text:?}"))?
                    .next()
                    .with_context(|| {
                        format!("--metrics-listen {metrics_text:?} resolves to no address")
                    })?,
            )
        };
        if let Some(n) = self.max_connections.or(file.max_connections) {
            if n == 0 {
                bail!("--max-connections must be at least 1");
            }
            broker.max_connections = n;
        }
        if let Some(n) = self.frame_bytes_max.or(file.frame_bytes_max) {
            if !(1024..=i32::MAX as usize).contains(&n) {
                bail!("--frame-bytes-max must be between 1024 and {}", i32::MAX);
            }
            broker.frame_bytes_max = n;
        }
        // One partition's records in a Fetch response, a whole batch included, must fit a
        // gather placeholder.
        let section_max = ringbroker_broker::limits::RECORD_SECTION_BYTES_MAX;
        if let Some(n) = self.max_message_bytes.or(file.max_message_bytes) {
            if !(61..=section_max).contains(&n) {
                bail!(
                    "--max-message-bytes must be between 61 (one empty record batch) and \
                     {section_max} (the largest batch a Fetch can serve)"
                );
            }
            broker.message_bytes_max = n;
        }
        if let Some(n) = self.fetch_max_bytes.or(file.fetch_max_bytes) {
            if !(1024..=section_max).contains(&n) {
                bail!(
                    "--fetch-max-bytes must be between 1024 and {section_max} (the largest \
                     record section one Fetch response can hold per partition)"
                );
            }
            broker.fetch_bytes_max = n;
        }
        if let Some(n) = self.recv_budget_bytes.or(file.recv_budget_bytes) {
            broker.recv_budget_bytes = n;
        }
        if let Some(n) = self.group_max_size.or(file.group_max_size) {
            let max = ringbroker_broker::limits::GROUP_MEMBERS_MAX;
            if !(1..=max).contains(&n) {
                bail!("--group-max-size must be between 1 and {max}");
            }
            broker.group_max_size = n;
        }
        if let Some(on) = self.log_cleaner_enable.or(file.log_cleaner_enable) {
            broker.cleaner.enabled = on;
        }
        if let Some(ms) = self.cleaner_backoff_ms.or(file.cleaner_backoff_ms) {
            broker.cleaner.backoff = std::time::Duration::from_millis(ms.max(10));
        }
        if let Some(n) = self
            .cleaner_dedupe_buffer_bytes
            .or(file.cleaner_dedupe_buffer_bytes)
        {
            // Small maps are allowed (tests force cleanings in several passes with them).
            let min = broker.cores.len() * CLEANER_MAP_BYTES_PER_SHARD_MIN;
            if n < min {
                bail!(
                    "--cleaner-dedupe-buffer-bytes must be at least \
                     {CLEANER_MAP_BYTES_PER_SHARD_MIN} per shard ({min})"
                );
            }
            broker.cleaner.dedupe_buffer_bytes = n;
        }
        if let Some(n) = self
            .cleaner_io_bytes_per_turn
            .or(file.cleaner_io_bytes_per_turn)
        {
            if !(4096..=1 << 30).contains(&n) {
                bail!("--cleaner-io-bytes-per-turn must be between 4096 and 1073741824");
            }
            broker.cleaner.io_bytes_per_turn = n;
        }
        if let Some(p) = self.cleaner_duty_percent.or(file.cleaner_duty_percent) {
            if !(1..=100).contains(&p) {
                bail!("--cleaner-duty-percent must be between 1 and 100");
            }
            broker.cleaner.duty_percent = p;
        }
        broker.cluster = resolve_cluster(ClusterFlags {
            node_id: self.node_id.or(file.node_id),
            cluster: self.cluster.or(file.cluster),
            internal_listen: self.internal_listen.or(file.internal_listen),
            default_replication_factor: self
                .default_replication_factor
                .or(file.default_replication_factor),
            broker_session_timeout_ms: self
                .broker_session_timeout_ms
                .or(file.broker_session_timeout_ms),
            broker_heartbeat_interval_ms: self
                .broker_heartbeat_interval_ms
                .or(file.broker_heartbeat_interval_ms),
        })?;
        let uring_fallback = self.uring_fallback.or(file.uring_fallback).unwrap_or(false);
        if uring_fallback {
            broker.ring.use_taskrun_flags = false;
            broker.use_msg_ring = false;
        }
        Ok(Settings {
            broker,
            uring_fallback,
        })
    }
}

/// The cluster settings as given (flags > env > file).
#[derive(Debug, Default)]
struct ClusterFlags {
    node_id: Option<i32>,
    cluster: Option<String>,
    internal_listen: Option<String>,
    default_replication_factor: Option<i16>,
    broker_session_timeout_ms: Option<u64>,
    broker_heartbeat_interval_ms: Option<u64>,
}

/// Voters one `--cluster` may list (a metadata quorum of more than a few voters only slows
/// its commits).
const CLUSTER_VOTERS_MAX: usize = 64;

/// Resolves one `host:port` to a socket address, naming `what` in the error.
fn socket_addr(text: &str, what: &str) -> Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("{what}: bad address {text:?} (expected host:port)"))?
        .next()
        .with_context(|| format!("{what}: {text:?} resolves to no address"))
}

/// Parses `--cluster id@host:port,...`.
fn parse_voters(text: &str) -> Result<Vec<(i32, SocketAddr)>> {
    let mut voters: Vec<(i32, SocketAddr)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('@')
            .with_context(|| format!("--cluster: {entry:?} is not id@host:port"))?;
        let id: i32 = id
            .parse()
            .with_context(|| format!("--cluster: bad node id {id:?} in {entry:?}"))?;
        if id <= 0 {
            bail!("--cluster: node id {id} must be positive (0 is a single node's id)");
        }
        let addr = socket_addr(addr, "--cluster")?;
        if voters.iter().any(|&(other, _)| other == id) {
            bail!("--cluster: node id {id} is listed twice");
        }
        if let Some((other, _)) = voters.iter().find(|&&(_, a)| a == addr) {
            bail!("--cluster: nodes {other} and {id} have the same address {addr}");
        }
        voters.push((id, addr));
    }
    if voters.is_empty() {
        bail!("--cluster: no voters listed (expected id@host:port,...)");
    }
    if voters.len() > CLUSTER_VOTERS_MAX {
        bail!(
            "--cluster: {} voters, at most {CLUSTER_VOTERS_MAX}",
            voters.len()
        );
    }
    Ok(voters)
}

fn resolve_cluster(flags: ClusterFlags) -> Result<Option<ClusterSettings>> {
    let Some(text) = flags.cluster else {
        let stray = [
            (flags.node_id.is_some(), "--node-id"),
            (flags.internal_listen.is_some(), "--internal-listen"),
            (
                flags.default_replication_factor.is_some(),
                "--default-replication-factor",
            ),
        ];
        if let Some((_, name)) = stray.iter().find(|(given, _)| *given) {
            bail!("{name} needs --cluster (a single node has node id 0 and one replica)");
        }
        return Ok(None);
    };
    let voters = parse_voters(&text)?;
    let node_id = flags
        .node_id
        .context("--cluster needs --node-id (this broker's id among the voters)")?;
    if node_id <= 0 {
        bail!("--node-id {node_id} must be positive in a cluster (0 is a single node's id)");
    }
    let own_addr = voters
        .iter()
        .find(|&&(id, _)| id == node_id)
        .map(|&(_, a)| a);
    let internal_listen = match (flags.internal_listen, own_addr) {
        (Some(text), _) => socket_addr(&text, "--internal-listen")?,
        (None, Some(a)) => a,
        (None, None) => bail!(
            "--node-id {node_id} is not one of the voters in --cluster ({}): it joins as a \
             learner (a broker added to the cluster) and needs --internal-listen, the address \
             the voters reach it on",
            voters
                .iter()
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let voter_count = i16::try_from(voters.len()).unwrap_or(i16::MAX);
    let default_replication_factor = flags
        .default_replication_factor
        .unwrap_or(DEFAULT_REPLICATION_FACTOR_MAX.min(voter_count));
    if !(1..=voter_count).contains(&default_replication_factor) {
        bail!(
            "--default-replication-factor must be between 1 and the number of voters ({voter_count})"
        );
    }
    let session_ms = flags
        .broker_session_timeout_ms
        .unwrap_or(BROKER_SESSION_TIMEOUT_DEFAULT.as_millis() as u64);
    let heartbeat_ms = flags
        .broker_heartbeat_interval_ms
        .unwrap_or(BROKER_HEARTBEAT_INTERVAL_DEFAULT.as_millis() as u64);
    if heartbeat_ms == 0 {
        bail!("--broker-heartbeat-interval-ms must be at least 1");
    }
    if session_ms <= heartbeat_ms {
        bail!(
            "--broker-session-timeout-ms ({session_ms}) must be longer than \
             --broker-heartbeat-interval-ms ({heartbeat_ms})"
        );
    }
    Ok(Some(ClusterSettings {
        node_id,
        voters,
        internal_listen,
        default_replication_factor,
        broker_session_timeout: std::time::Duration::from_millis(session_ms),
        broker_heartbeat_interval: std::time::Duration::from_millis(heartbeat_ms),
    }))
}

struct ListenerFlags {
    listen: Option<String>,
    advertise: Option<String>,
    listeners: Option<String>,
    advertised_listeners: Option<String>,
    protocol_map: Option<String>,
}

/// The listeners from `--listeners` (Kafka's syntax) or `--listen` (one PLAINTEXT listener),
/// with `--advertised-listeners` or `--advertise` applied.
/// Splits a list of principals at `;` and at `,` where a new `Kind:` principal starts: the
/// commas inside a certificate's distinguished name (`User:CN=admin,OU=ops,O=acme`, an mTLS
/// principal) stay in it.
fn split_principals(text: &str) -> Vec<String> {
    let starts_principal = |piece: &str| {
        piece.split_once(':').is_some_and(|(kind, _)| {
            !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphabetic())
        })
    };
    let mut out: Vec<String> = Vec::new();
    for group in text.split(';') {
        let mut current: Option<String> = None;
        for piece in group.split(',') {
            let piece = piece.trim();
            match current.as_mut() {
                Some(c) if !starts_principal(piece) => {
                    c.push(',');
                    c.push_str(piece);
                }
                _ => {
                    if let Some(c) = current.take() {
                        out.push(c);
                    }
                    current = Some(piece.to_string());
                }
            }
        }
        out.extend(current);
    }
    out.retain(|p| !p.is_empty());
    out
}

fn resolve_listeners(flags: ListenerFlags) -> Result<Vec<security::ListenerConfig>> {
    if flags.listen.is_some() && flags.listeners.is_some() {
        bail!("--listen and --listeners both given: use --listeners alone (--listen ADDR is PLAINTEXT://ADDR)");
    }
    if flags.advertise.is_some() && flags.advertised_listeners.is_some() {
        bail!(
            "--advertise and --advertised-listeners both given: use --advertised-listeners alone"
        );
    }
    let mut listeners = match flags.listeners {
        Some(text) => security::parse_listeners(&text, flags.protocol_map.as_deref())
            .map_err(anyhow::Error::msg)?,
        None => {
            if flags.protocol_map.is_some() {
                bail!("--listener-security-protocol-map needs --listeners");
            }
            let text = flags.listen.unwrap_or_else(|| "127.0.0.1:9092".into());
            let addr: SocketAddr = text
                .to_socket_addrs()
                .with_context(|| format!("--listen {text:?}"))?
                .next()
                .with_context(|| format!("--listen {text:?} resolves to no address"))?;
            vec![security::ListenerConfig::plaintext(addr)]
        }
    };
    if let Some(text) = flags.advertised_listeners {
        security::apply_advertised(&mut listeners, &text).map_err(anyhow::Error::msg)?;
    }
    if let Some(text) = flags.advertise {
        if listeners.len() > 1 {
            bail!("--advertise names one address: with several --listeners use --advertised-listeners");
        }
        let (host, port) = text
            .rsplit_once(':')
            .with_context(|| format!("--advertise {text:?}: expected host:port"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("--advertise {text:?}: bad port"))?;
        listeners[0].advertised = Some((
            host.trim_matches(|c| c == '[' || c == ']').to_string(),
            port,
        ));
    }
    Ok(listeners)
}

struct SecurityFlags {
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_client_ca_file: Option<PathBuf>,
    tls_client_auth: Option<String>,
    sasl_mechanisms: Option<String>,
    super_users: Option<String>,
    authorizer: Option<String>,
    allow_everyone_if_no_acl_found: Option<bool>,
    connections_max_reauth_ms: Option<u64>,
    failed_authentication_delay_ms: Option<u64>,
    inter_broker_listener_name: Option<String>,
    inter_broker_sasl_mechanism: Option<String>,
    inter_broker_user: Option<String>,
    inter_broker_password_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
}

/// Longest `--failed-authentication-delay-ms` (a connection waits this long holding its slot).
const FAILED_AUTHENTICATION_DELAY_MS_MAX: u64 = 10_000;

/// The security settings, checked against the listeners they serve.
fn resolve_security(
    flags: SecurityFlags,
    listeners: &[security::ListenerConfig],
) -> Result<security::SecurityConfig> {
    let client_auth = match flags.tls_client_auth.as_deref() {
        None if flags.tls_client_ca_file.is_some() => security::ClientAuth::Required,
        None => security::ClientAuth::None,
        Some(text) => security::ClientAuth::from_name(text).with_context(|| {
            format!("--tls-client-auth {text:?}: expected required, requested or none")
        })?,
    };
    if client_auth != security::ClientAuth::None && flags.tls_client_ca_file.is_none() {
        bail!("--tls-client-auth required|requested needs --tls-client-ca-file");
    }
    let tls = match (flags.tls_cert_file, flags.tls_key_file) {
        (Some(cert), Some(key)) => Some(security::TlsFiles {
            cert,
            key,
            client_ca: flags.tls_client_ca_file,
            client_auth,
        }),
        (None, None) => {
            if flags.tls_client_ca_file.is_some() {
                bail!("--tls-client-ca-file needs --tls-cert-file and --tls-key-file");
            }
            None
        }
        _ => bail!("--tls-cert-file and --tls-key-file go together"),
    };
    let mut s = security::SecurityConfig {
        tls,
        ..Default::default()
    };
    if let Some(l) = listeners.iter().find(|l| l.protocol.uses_tls()) {
        if s.tls.is_none() {
            bail!(
                "listener {} uses {}: give --tls-cert-file and --tls-key-file",
                l.name,
                l.protocol
            );
        }
    }
    if let Some(text) = flags.sasl_mechanisms {
        let mut mechanisms = Vec::new();
        for name in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let m = security::SaslMechanism::from_name(&name.to_ascii_uppercase())
                .with_context(|| {
                    format!("--sasl-mechanisms: unknown mechanism {name:?} (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)")
                })?;
            if !mechanisms.contains(&m) {
                mechanisms.push(m);
            }
        }
        if mechanisms.is_empty() {
            bail!("--sasl-mechanisms names no mechanism");
        }
        s.sasl_mechanisms = mechanisms;
    }
    if let Some(text) = flags.super_users {
        for p in split_principals(&text) {
            let p = p.as_str();
            match p.split_once(':') {
                Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {
                    s.super_users.push(p.to_string())
                }
                _ => bail!("--super-users: {p:?} is not a principal like User:admin"),
            }
        }
    }
    s.authorizer = match flags.authorizer.as_deref() {
        None | Some("none") => false,
        Some("acl") => true,
        Some(other) => bail!("--authorizer {other:?}: expected acl or none"),
    };
    s.allow_everyone_if_no_acl_found = flags.allow_everyone_if_no_acl_found.unwrap_or(false);
    s.connections_max_reauth = match flags.connections_max_reauth_ms {
        None | Some(0) => None,
        Some(ms) => Some(std::time::Duration::from_millis(ms)),
    };
    if let Some(ms) = flags.failed_authentication_delay_ms {
        if ms > FAILED_AUTHENTICATION_DELAY_MS_MAX {
            bail!("--failed-authentication-delay-ms must be at most {FAILED_AUTHENTICATION_DELAY_MS_MAX}");
        }
        s.failed_authentication_delay = std::time::Duration::from_millis(ms);
    }
    if let Some(name) = flags.inter_broker_listener_name {
        let name = name.to_ascii_uppercase();
        if !listeners.iter().any(|l| l.name == name) {
            bail!("--inter-broker-listener-name {name}: no such listener in --listeners");
        }
        s.inter_broker_listener = Some(name);
    }
    s.inter_broker_sasl = match (flags.inter_broker_user, flags.inter_broker_password_file) {
        (Some(user), Some(file)) => {
            let mechanism_name = flags
                .inter_broker_sasl_mechanism
                .unwrap_or_else(|| "SCRAM-SHA-512".into());
            let mechanism =
                security::SaslMechanism::from_name(&mechanism_name.to_ascii_uppercase())
                    .with_context(|| {
                        format!("--inter-broker-sasl-mechanism {mechanism_name:?}: unknown")
                    })?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("--inter-broker-password-file {}", file.display()))?;
            let password = text.lines().next().unwrap_or("").to_string();
            if password.is_empty() {
                bail!("--inter-broker-password-file {} is empty", file.display());
            }
            Some((mechanism, user, password))
        }
        (None, None) => {
            if flags.inter_broker_sasl_mechanism.is_some() {
                bail!("--inter-broker-sasl-mechanism needs --inter-broker-user and --inter-broker-password-file");
            }
            None
        }
        _ => bail!("--inter-broker-user and --inter-broker-password-file go together"),
    };
    if flags.tls_ca_file.is_some() && s.tls.is_none() {
        bail!("--tls-ca-file needs --tls-cert-file and --tls-key-file");
    }
    s.inter_broker_tls_ca = flags.tls_ca_file;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn super_users_keep_the_commas_of_a_distinguished_name() {
        assert_eq!(
            split_principals("User:CN=admin,OU=ops,O=acme;User:bob, User:carol"),
            vec!["User:CN=admin,OU=ops,O=acme", "User:bob", "User:carol"]
        );
        assert_eq!(
            split_principals("User:admin,User:CN=x,O=y"),
            vec!["User:admin", "User:CN=x,O=y"]
        );
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rb.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1234\"\ndefault_partitions = 3\nauto_create_topics = false\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            default_partitions: Some(5),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(
            s.broker.listeners[0].addr,
            "127.0.0.1:1234".parse().unwrap()
        );
        assert_eq!(s.broker.default_partitions, 5);
        assert!(!s.broker.auto_create_topics);
        assert_eq!(s.broker.data_dir, PathBuf::from("ringbroker-data"));
    }

    #[test]
    fn cleaner_flags_resolve_and_bad_ones_are_explained() {
        let s = ServeArgs {
            cores: Some("0".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            s.broker.cleaner,
            ringbroker_broker::config::CleanerConfig::default()
        );
        assert!(s.broker.cleaner.enabled);
        let s = ServeArgs {
            cores: Some("0".into()),
            log_cleaner_enable: Some(false),
            cleaner_backoff_ms: Some(250),
            cleaner_dedupe_buffer_bytes: Some(1 << 20),
            cleaner_io_bytes_per_turn: Some(65536),
            cleaner_duty_percent: Some(50),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let c = &s.broker.cleaner;
        assert!(!c.enabled);
        assert_eq!(c.backoff, std::time::Duration::from_millis(250));
        assert_eq!(c.map_bytes_per_shard(1), 1 << 20);
        assert_eq!(c.map_bytes_per_shard(4), 1 << 18);
        assert_eq!(c.io_bytes_per_turn, 65536);
        assert_eq!(c.duty_percent, 50);
        for args in [
            ServeArgs {
                cleaner_dedupe_buffer_bytes: Some(100),
                ..Default::default()
            },
            ServeArgs {
                cleaner_io_bytes_per_turn: Some(10),
                ..Default::default()
            },
            ServeArgs {
                cleaner_duty_percent: Some(0),
                ..Default::default()
            },
            ServeArgs {
                cleaner_duty_percent: Some(101),
                ..Default::default()
            },
        ] {
            let e = args.resolve().err().unwrap();
            assert!(format!("{e:#}").contains("--cleaner-"), "{e:#}");
        }
    }

    #[test]
    fn bad_values_are_explained() {
        let e = ServeArgs {
            cores: Some("5-1".into()),
            ..Default::default()
        }
        .resolve()
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("--cores"));
        let e = ServeArgs {
            advertise: Some("nohost".into()),
            ..Default::default()
        }
        .resolve()
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("host:port"));
        let e = ServeArgs {
            flush: Some("sometimes".into()),
            ..Default::default()
        }
        .resolve()
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("interval=<ms>"));
        let e = ServeArgs {
            segment_bytes: Some(4 << 30),
            ..Default::default()
        }
        .resolve()
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("--segment-bytes"), "{e:#}");
        for (fetch, message) in [(Some(300 << 20), None), (None, Some(300 << 20))] {
            let e = ServeArgs {
                fetch_max_bytes: fetch,
                max_message_bytes: message,
                ..Default::default()
            }
            .resolve()
            .err()
            .unwrap();
            assert!(format!("{e:#}").contains("268435456"), "{e:#}");
        }
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.broker.fetch_bytes_max, 57_671_680);
        let s = ServeArgs {
            fetch_max_bytes: Some(1 << 20),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.broker.fetch_bytes_max, 1 << 20);
        let s = ServeArgs {
            flush: Some("interval=250".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            s.broker.flush,
            ringbroker_broker::config::FlushPolicy::Interval(std::time::Duration::from_millis(250))
        );
    }
    #[test]
    fn group_max_size_is_bounded_and_defaults_to_the_member_limit() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.broker.group_max_size, 1000);
        let s = ServeArgs {
            group_max_size: Some(2),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.broker.group_max_size, 2);
        for bad in [0, 1001] {
            let e = ServeArgs {
                group_max_size: Some(bad),
                ..Default::default()
            }
            .resolve()
            .err()
            .unwrap();
            assert!(format!("{e:#}").contains("--group-max-size"), "{e:#}");
        }
    }

    #[test]
    fn cluster_flags_resolve_with_defaults() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.broker.cluster, None);
        let s = ServeArgs {
            node_id: Some(2),
            cluster: Some("1@127.0.0.1:19192, 2@127.0.0.1:19193,3@127.0.0.1:19194".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let c = s.broker.cluster.unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.voters.len(), 3);
        assert_eq!(c.internal_listen, "127.0.0.1:19193".parse().unwrap());
        assert_eq!(c.default_replication_factor, 3);
        assert_eq!(
            c.broker_session_timeout,
            std::time::Duration::from_millis(2000)
        );
        assert_eq!(
            c.broker_heartbeat_interval,
            std::time::Duration::from_millis(250)
        );
        let s = ServeArgs {
            node_id: Some(1),
            cluster: Some("1@127.0.0.1:19192,2@127.0.0.1:19193".into()),
            internal_listen: Some("0.0.0.0:19999".into()),
            broker_session_timeout_ms: Some(5000),
            broker_heartbeat_interval_ms: Some(100),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let c = s.broker.cluster.unwrap();
        assert_eq!(c.default_replication_factor, 2);
        assert_eq!(c.internal_listen, "0.0.0.0:19999".parse().unwrap());
        assert_eq!(
            c.broker_session_timeout,
            std::time::Duration::from_millis(5000)
        );
    }

    #[test]
    fn a_node_id_outside_the_voters_is_a_learner_with_its_own_internal_address() {
        let s = ServeArgs {
            node_id: Some(4),
            cluster: Some("1@127.0.0.1:19192,2@127.0.0.1:19193".into()),
            internal_listen: Some("127.0.0.1:19194".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let c = s.broker.cluster.unwrap();
        assert_eq!(c.node_id, 4);
        assert_eq!(c.internal_listen, "127.0.0.1:19194".parse().unwrap());
    }

    #[test]
    fn bad_cluster_flags_are_explained() {
        // (--node-id, --cluster, --default-replication-factor, what the error says)
        type Case<'a> = (Option<i32>, Option<&'a str>, Option<i16>, &'a str);
        let cases: &[Case] = &[
            (
                Some(4),
                Some("1@127.0.0.1:1,2@127.0.0.1:2"),
                None,
                "joins as a learner (a broker added to the cluster) and needs --internal-listen",
            ),
            (
                Some(1),
                Some("1@127.0.0.1:1,1@127.0.0.1:2"),
                None,
                "listed twice",
            ),
            (
                Some(1),
                Some("1@127.0.0.1:1,2@127.0.0.1:1"),
                None,
                "same address",
            ),
            (Some(1), Some("1@nohostport"), None, "bad address"),
            (Some(1), Some("1-127.0.0.1:1"), None, "id@host:port"),
            (Some(1), Some("x@127.0.0.1:1"), None, "bad node id"),
            (Some(0), Some("0@127.0.0.1:1"), None, "must be positive"),
            (None, Some("1@127.0.0.1:1"), None, "needs --node-id"),
            (Some(1), None, None, "needs --cluster"),
            (
                Some(1),
                Some("1@127.0.0.1:1,2@127.0.0.1:2"),
                Some(3),
                "--default-replication-factor",
            ),
            (
                Some(1),
                Some("1@127.0.0.1:1"),
                Some(0),
                "--default-replication-factor",
            ),
        ];
        for &(node_id, cluster, rf, expected) in cases {
            let e = ServeArgs {
                node_id,
                cluster: cluster.map(String::from),
                default_replication_factor: rf,
                ..Default::default()
            }
            .resolve()
            .err()
            .unwrap_or_else(|| panic!("{node_id:?} {cluster:?} {rf:?} accepted"));
            assert!(format!("{e:#}").contains(expected), "{e:#}");
        }
        let e = ServeArgs {
            node_id: Some(1),
            cluster: Some("1@127.0.0.1:1".into()),
            broker_session_timeout_ms: Some(100),
            broker_heartbeat_interval_ms: Some(100),
            ..Default::default()
        }
        .resolve()
        .err()
        .unwrap();
        assert!(
            format!("{e:#}").contains("--broker-session-timeout-ms"),
            "{e:#}"
        );
    }
}
