//! The shard runtime: one io_uring ring and one single-threaded executor per thread.
//!
//! - [`driver`]: the ring, the slab of in-flight ops keyed by `user_data`, submission and
//!   completion; an op keeps its buffers and fds until its completion arrives, even when the
//!   future that started it was dropped.
//! - [`op`]: the `Op<T>` future and the typed operations built on it (accept, recv, send,
//!   writev, read/write at offset, fdatasync, timeout).
//! - [`executor`]: `!Send` tasks, a ready queue, the loop that alternates between running
//!   tasks and entering the ring.
//! - [`mesh`]: bounded SPSC queues between every ordered pair of shards, woken through the
//!   target's ring (MSG_RING, or an eventfd the target keeps a read armed on).
//! - [`probe`]: what the kernel offers (opcodes, setup flags) and the clear failure when
//!   io_uring is missing or disabled.
//! - [`affinity`]: CPU lists (`0-3,6`) and pinning.
//! - [`oneshot`], [`notify`]: small `!Send` synchronisation primitives for tasks on one shard.
//! - [`splice`]: file ranges to sockets through pooled pipes, with linked SPLICE SQEs.
//! - [`chunk`]: the gather-list element shared by `protocol` (which places them) and the
//!   send path (which consumes them).

pub mod affinity;
pub mod chunk;
pub mod driver;
pub mod executor;
pub mod mesh;
pub mod notify;
pub mod oneshot;
pub mod op;
pub mod probe;
pub mod splice;
pub mod stats;

pub use driver::{RingConfig, RingStats};
pub use executor::{block_on, spawn, yield_now, Runtime};
pub use probe::KernelFeatures;
