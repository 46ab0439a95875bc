//! The settings a broker runs with (the binary fills this from flags, env and TOML).

use ringbroker_runtime::RingConfig;
use ringbroker_storage::LogConfig;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Kafka's default `message.max.bytes`: the largest record batch a Produce may carry.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1_048_588;

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// Host and port clients are told to connect to; `None`: the bound listen address.
    pub advertise: Option<(String, u16)>,
    pub data_dir: PathBuf,
    /// One shard per CPU, pinned to it.
    pub cores: Vec<usize>,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub frame_bytes_max: usize,
    pub message_bytes_max: usize,
    pub ring: RingConfig,
    /// Wake other shards with MSG_RING (else eventfd writes).
    pub use_msg_ring: bool,
    pub log: LogConfig,
}

impl BrokerConfig {
    /// Defaults for a broker on `listen` with data in `data_dir`, on `cores`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, cores: Vec<usize>) -> BrokerConfig {
        BrokerConfig {
            listen,
            advertise: None,
            data_dir,
            cores,
            auto_create_topics: true,
            default_partitions: 1,
            frame_bytes_max: ringbroker_protocol::frame::FRAME_BYTES_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            ring: RingConfig::default(),
            use_msg_ring: true,
            log: LogConfig::default(),
        }
    }
}
