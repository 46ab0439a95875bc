//! Kafka's ACL operations (`AclOperation` codes) and the authorized-operations bitfields that
//! Metadata, DescribeGroups and DescribeCluster report when a client asks for them. There is
//! no authorizer yet, so every operation Kafka defines for a resource type is allowed, as
//! Kafka reports it when no authorizer is configured.

/// `AclOperation` codes (org.apache.kafka.common.acl.AclOperation).
pub const READ: u8 = 3;
pub const WRITE: u8 = 4;
pub const CREATE: u8 = 5;
pub const DELETE: u8 = 6;
pub const ALTER: u8 = 7;
pub const DESCRIBE: u8 = 8;
pub const CLUSTER_ACTION: u8 = 9;
pub const DESCRIBE_CONFIGS: u8 = 10;
pub const ALTER_CONFIGS: u8 = 11;
pub const IDEMPOTENT_WRITE: u8 = 12;

/// The schema default of every `*_authorized_operations` field: not asked for.
pub const OMITTED: i32 = i32::MIN;

/// The operations Kafka defines on a topic (`AclEntry.supportedOperations(TOPIC)`).
pub const TOPIC_OPERATIONS: &[u8] = &[
    READ,
    WRITE,
    CREATE,
    DELETE,
    ALTER,
    DESCRIBE,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
];

/// The operations Kafka defines on a consumer group (this broker has no group configs, so
/// DESCRIBE_CONFIGS/ALTER_CONFIGS, which newer Kafka adds for them, are not offered).
pub const GROUP_OPERATIONS: &[u8] = &[READ, DESCRIBE, DELETE];

/// The operations Kafka defines on the cluster.
pub const CLUSTER_OPERATIONS: &[u8] = &[
    CREATE,
    ALTER,
    DESCRIBE,
    CLUSTER_ACTION,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
    IDEMPOTENT_WRITE,
];

/// Kafka's `Utils.to32BitField`: bit `code` set for each operation.
pub fn bitfield(operations: &[u8]) -> i32 {
    operations.iter().fold(0i32, |bits, &op| {
        debug_assert!(op < 32);
        bits | (1 << op)
    })
}

/// The value of an authorized-operations field: the operations allowed on the resource when
/// the client asked for them, [`OMITTED`] otherwise.
pub fn authorized(asked: bool, operations: &[u8]) -> i32 {
    if asked {
        bitfield(operations)
    } else {
        OMITTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfields_match_kafkas_codes() {
        // READ(3), DESCRIBE(8), DELETE(6).
        assert_eq!(bitfield(GROUP_OPERATIONS), (1 << 3) | (1 << 6) | (1 << 8));
        // Bits 3 to 8, 10 and 11.
        assert_eq!(bitfield(TOPIC_OPERATIONS), 0b1101_1111_1000);
        // Bits 5, 7 to 12.
        assert_eq!(bitfield(CLUSTER_OPERATIONS), 0b1_1111_1010_0000);
        assert_eq!(authorized(false, TOPIC_OPERATIONS), i32::MIN);
    }
}
