//! The settings a broker runs with (the binary fills this from flags, env and TOML).

use ringbroker_runtime::RingConfig;
use ringbroker_storage::LogConfig;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Kafka's default `message.max.bytes`: the largest record batch a Produce may carry.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1_048_588;

/// When appended data is fdatasync'd (`--flush`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Only for Produce with acks=-1, before answering it (group commit).
    Acks,
    /// Before answering every Produce (acks 1 and -1).
    Always,
    /// Every so often in the background; no Produce waits for it.
    Interval(std::time::Duration),
    /// Only at clean shutdown (the OS writes back when it likes).
    Never,
}

impl std::str::FromStr for FlushPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<FlushPolicy, String> {
        match s {
            "acks" => Ok(FlushPolicy::Acks),
            "always" => Ok(FlushPolicy::Always),
            "never" => Ok(FlushPolicy::Never),
            _ => match s.strip_prefix("interval=").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => {
                    Ok(FlushPolicy::Interval(std::time::Duration::from_millis(ms)))
                }
                _ => Err(format!(
                    "--flush {s:?}: expected acks, always, interval=<ms> (ms > 0) or never"
                )),
            },
        }
    }
}

impl FlushPolicy {
    /// Whether a Produce with these acks waits for an fdatasync before it is answered.
    pub fn sync_before_ack(&self, acks: i16) -> bool {
        match self {
            FlushPolicy::Acks => acks == -1,
            FlushPolicy::Always => acks != 0,
            FlushPolicy::Interval(_) | FlushPolicy::Never => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Where Kafka clients connect (`--listeners`; `--listen` is one PLAINTEXT listener):
    /// never empty, every shard accepts on each (SO_REUSEPORT). The first is the one start-up
    /// reports and the CLI's default.
    pub listeners: Vec<crate::security::ListenerConfig>,
    /// TLS, SASL and authorizer settings (issue #16).
    pub security: crate::security::SecurityConfig,
    pub data_dir: PathBuf,
    /// One shard per CPU, pinned to it.
    pub cores: Vec<usize>,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub frame_bytes_max: usize,
    pub message_bytes_max: usize,
    /// Record bytes one Fetch response carries at most (Kafka's `fetch.max.bytes`); clients'
    /// larger `max_bytes`/`partition_max_bytes` are clamped to it.
    pub fetch_bytes_max: usize,
    pub ring: RingConfig,
    /// Wake other shards with MSG_RING (else eventfd writes).
    pub use_msg_ring: bool,
    pub log: LogConfig,
    pub flush: FlushPolicy,
    /// How often each shard applies retention to the partitions it owns.
    pub retention_check_interval: std::time::Duration,
    /// How often each shard writes the recovery checkpoint of the partitions it owns.
    pub recovery_checkpoint_interval: std::time::Duration,
    /// Where `/metrics` and `/health` are served (off the shard cores); `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Client connections open at once, all shards together; more are accepted and closed.
    pub max_connections: usize,
    /// Receive-buffer bytes per shard for frames larger than a connection's own buffer.
    pub recv_budget_bytes: usize,
    /// Kafka's `group.max.size`: members of one group; a JoinGroup beyond it gets
    /// GROUP_MAX_SIZE_REACHED. At most `limits::GROUP_MEMBERS_MAX`.
    pub group_max_size: usize,
    /// The log cleaner of compacted topics (one per shard).
    pub cleaner: CleanerConfig,
    /// A partition leader drops a follower from the ISR that has not caught up for this long
    /// (Kafka's `replica.lag.time.max.ms`; cluster mode only).
    pub replica_lag_time_max: std::time::Duration,
    /// Membership of a cluster (`--cluster`); `None`: a single node, as without clustering.
    pub cluster: Option<ClusterSettings>,
}

/// How this broker joins a cluster (`--node-id`, `--cluster`, `--internal-listen`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This broker's id (`--node-id`); one of `voters`.
    pub node_id: i32,
    /// The metadata quorum's voters and their broker-to-broker addresses (`--cluster`).
    pub voters: Vec<(i32, SocketAddr)>,
    /// Where this node accepts broker-to-broker connections (`--internal-listen`).
    pub internal_listen: SocketAddr,
    /// Replicas of a topic created with replication factor -1 (and of `__consumer_offsets`).
    pub default_replication_factor: i16,
    /// A broker not heard from for this long is fenced by the active controller.
    pub broker_session_timeout: std::time::Duration,
    /// How often this broker tells the active controller it is alive.
    pub broker_heartbeat_interval: std::time::Duration,
}

/// Default `--broker-session-timeout-ms`.
pub const BROKER_SESSION_TIMEOUT_DEFAULT: std::time::Duration =
    std::time::Duration::from_millis(2000);
/// Default `--broker-heartbeat-interval-ms`.
pub const BROKER_HEARTBEAT_INTERVAL_DEFAULT: std::time::Duration =
    std::time::Duration::from_millis(250);
/// The largest replication factor `--default-replication-factor` defaults to.
pub const DEFAULT_REPLICATION_FACTOR_MAX: i16 = 3;

/// The log cleaner's settings (`--log-cleaner-enable`, `--cleaner-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanerConfig {
    /// Kafka's `log.cleaner.enable`: without it compacted topics grow (nothing is removed).
    pub enabled: bool,
    /// Kafka's `log.cleaner.backoff.ms`: how long a shard's cleaner sleeps between looks for
    /// a partition to clean.
    pub backoff: std::time::Duration,
    /// Kafka's `log.cleaner.dedupe.buffer.size`: the key→offset maps of all shards together;
    /// each shard's cleaner gets an equal share, as each Kafka cleaner thread does.
    pub dedupe_buffer_bytes: usize,
    /// Bytes a cleaner reads and writes before it yields to the shard's requests.
    pub io_bytes_per_turn: usize,
    /// Share of a shard's wall clock its cleaner may take, in percent (1-100).
    pub duty_percent: u32,
}

/// Default `--cleaner-backoff-ms` (Kafka's `log.cleaner.backoff.ms`).
pub const CLEANER_BACKOFF_DEFAULT: std::time::Duration = std::time::Duration::from_secs(15);
/// Default `--cleaner-dedupe-buffer-bytes` (Kafka's `log.cleaner.dedupe.buffer.size`).
pub const CLEANER_DEDUPE_BUFFER_BYTES_DEFAULT: usize = 128 * 1024 * 1024;
/// Default `--cleaner-io-bytes-per-turn`.
pub const CLEANER_IO_BYTES_PER_TURN_DEFAULT: usize = 1024 * 1024;
/// Default `--cleaner-duty-percent`: a cleaning takes at most a fifth of its shard's time, so
/// a shard at half its produce capacity keeps its latency while a log is cleaned (measured in
/// docs/benchmarks.md, "Log compaction").
pub const CLEANER_DUTY_PERCENT_DEFAULT: u32 = 20;

impl Default for CleanerConfig {
    fn default() -> CleanerConfig {
        CleanerConfig {
            enabled: true,
            backoff: CLEANER_BACKOFF_DEFAULT,
            dedupe_buffer_bytes: CLEANER_DEDUPE_BUFFER_BYTES_DEFAULT,
            io_bytes_per_turn: CLEANER_IO_BYTES_PER_TURN_DEFAULT,
            duty_percent: CLEANER_DUTY_PERCENT_DEFAULT,
        }
    }
}

impl CleanerConfig {
    /// One shard's share of the dedupe buffer (Kafka: the buffer size over the number of
    /// cleaner threads, each share at most 2 GiB).
    pub fn map_bytes_per_shard(&self, shard_count: usize) -> usize {
        const SHARE_BYTES_MAX: usize = i32::MAX as usize;
        (self.dedupe_buffer_bytes / shard_count.max(1)).min(SHARE_BYTES_MAX)
    }
}

/// Default `--recovery-checkpoint-ms`: after a crash, recovery scans what was written since
/// (at most this long ago, plus what was never fdatasync'd); each checkpoint costs a partition
/// with new data a few small writes and fdatasyncs.
pub const RECOVERY_CHECKPOINT_INTERVAL_DEFAULT: std::time::Duration =
    std::time::Duration::from_secs(5);

/// Default `--max-connections`.
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;

impl BrokerConfig {
    /// Defaults for a broker on `listen` with data in `data_dir`, on `cores`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, cores: Vec<usize>) -> BrokerConfig {
        BrokerConfig {
            listeners: vec![crate::security::ListenerConfig::plaintext(listen)],
            security: crate::security::SecurityConfig::default(),
            data_dir,
            cores,
            auto_create_topics: true,
            default_partitions: 1,
            frame_bytes_max: ringbroker_protocol::frame::FRAME_BYTES_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            fetch_bytes_max: crate::limits::FETCH_BYTES_MAX_DEFAULT,
            ring: RingConfig::default(),
            use_msg_ring: true,
            log: LogConfig::default(),
            flush: FlushPolicy::Acks,
            retention_check_interval: std::time::Duration::from_secs(60),
            recovery_checkpoint_interval: RECOVERY_CHECKPOINT_INTERVAL_DEFAULT,
            metrics_listen: None,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            recv_budget_bytes: crate::limits::RECV_BUDGET_BYTES_DEFAULT,
            group_max_size: crate::limits::GROUP_MEMBERS_MAX,
            cleaner: CleanerConfig::default(),
            replica_lag_time_max: crate::replication::REPLICA_LAG_TIME_MAX,
            cluster: None,
        }
    }
}
