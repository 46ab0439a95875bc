//! A partition's part in its replica set on this node.
//!
//! INTERFACE SKELETON (branch `cl-replication` fills it in): the shard calls these hooks on
//! every shard whenever its view of a topic changes, so the owner of each partition can take
//! up its role (leader at an epoch, follower of a leader, or neither) and stop the old one.

use crate::metadata::TopicInfo;
use crate::shard::{PartitionId, Shard};
use std::sync::Arc;

/// `topic` was added to or changed in `shard`'s view (new replica sets, leaders, epochs, ISR,
/// configs or partitions). Called after the view holds it.
pub fn topic_changed(shard: &Shard, topic: &Arc<TopicInfo>) {
    let _ = (shard, topic);
}

/// Partition `id` is gone from this shard (topic deleted, or moved away).
pub fn partition_removed(shard: &Shard, id: PartitionId) {
    let _ = (shard, id);
}
