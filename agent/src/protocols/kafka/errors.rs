//! What goes wrong, by name: the parser's own error labels ([`reason`]) and the broker's
//! error codes ([`error_code_name`]).

/// Stable labels of [`L7Event::ParseError`](crate::protocols::L7Event::ParseError)s from
/// this parser.
pub mod reason {
    pub const INVALID_FRAME_SIZE: &str = "invalid_frame_size";
    pub const INVALID_REQUEST_HEADER: &str = "invalid_request_header";
    pub const GAP_IN_FRAME: &str = "gap_in_frame";
    pub const GAP_BETWEEN_FRAMES: &str = "gap_between_frames";
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    pub const MALFORMED_PRODUCE: &str = "malformed_produce";
    pub const MALFORMED_FETCH: &str = "malformed_fetch";
    pub const INVALID_RECORD_BATCH: &str = "invalid_record_batch";
    pub const LEGACY_MESSAGE_FORMAT: &str = "legacy_message_format";
    pub const COMPRESSED_BATCH: &str = "compressed_batch";
    pub const DECOMPRESS_FAILED: &str = "decompress_failed";
    pub const TOO_MANY_MESSAGES: &str = "too_many_messages";
    pub const TOO_MANY_IN_FLIGHT: &str = "too_many_in_flight";
    pub const UNMATCHED_RESPONSE: &str = "unmatched_response";
    pub const RESPONSE_MISSING: &str = "response_missing";
    pub const CLOSED_BEFORE_RESPONSE: &str = "closed_before_response";
    pub const TOPIC_ID_UNKNOWN: &str = "topic_id_unknown";

    /// Every label, so metrics can pre-register them.
    pub const ALL: [&str; 17] = [
        INVALID_FRAME_SIZE,
        INVALID_REQUEST_HEADER,
        GAP_IN_FRAME,
        GAP_BETWEEN_FRAMES,
        FRAME_TOO_LARGE,
        MALFORMED_PRODUCE,
        MALFORMED_FETCH,
        INVALID_RECORD_BATCH,
        LEGACY_MESSAGE_FORMAT,
        COMPRESSED_BATCH,
        DECOMPRESS_FAILED,
        TOO_MANY_MESSAGES,
        TOO_MANY_IN_FLIGHT,
        UNMATCHED_RESPONSE,
        RESPONSE_MISSING,
        CLOSED_BEFORE_RESPONSE,
        TOPIC_ID_UNKNOWN,
    ];
}

/// Kafka's error code names (the `errors` table of the protocol), stable labels for
/// `error.type`.
pub fn error_code_name(code: i16) -> String {
    const NAMES: [&str; 83] = [
        "NONE",
        "OFFSET_OUT_OF_RANGE",
        "CORRUPT_MESSAGE",
        "UNKNOWN_TOPIC_OR_PARTITION",
        "INVALID_FETCH_SIZE",
        "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_OR_FOLLOWER",
        "REQUEST_TIMED_OUT",
        "BROKER_NOT_AVAILABLE",
        "REPLICA_NOT_AVAILABLE",
        "MESSAGE_TOO_LARGE",
        "STALE_CONTROLLER_EPOCH",
        "OFFSET_METADATA_TOO_LARGE",
        "NETWORK_EXCEPTION",
        "COORDINATOR_LOAD_IN_PROGRESS",
        "COORDINATOR_NOT_AVAILABLE",
        "NOT_COORDINATOR",
        "INVALID_TOPIC_EXCEPTION",
        "RECORD_LIST_TOO_LARGE",
        "NOT_ENOUGH_REPLICAS",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        "INVALID_REQUIRED_ACKS",
        "ILLEGAL_GENERATION",
        "INCONSISTENT_GROUP_PROTOCOL",
        "INVALID_GROUP_ID",
        "UNKNOWN_MEMBER_ID",
        "INVALID_SESSION_TIMEOUT",
        "REBALANCE_IN_PROGRESS",
        "INVALID_COMMIT_OFFSET_SIZE",
        "TOPIC_AUTHORIZATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "INVALID_TIMESTAMP",
        "UNSUPPORTED_SASL_MECHANISM",
        "ILLEGAL_SASL_STATE",
        "UNSUPPORTED_VERSION",
        "TOPIC_ALREADY_EXISTS",
        "INVALID_PARTITIONS",
        "INVALID_REPLICATION_FACTOR",
        "INVALID_REPLICA_ASSIGNMENT",
        "INVALID_CONFIG",
        "NOT_CONTROLLER",
        "INVALID_REQUEST",
        "UNSUPPORTED_FOR_MESSAGE_FORMAT",
        "POLICY_VIOLATION",
        "OUT_OF_ORDER_SEQUENCE_NUMBER",
        "DUPLICATE_SEQUENCE_NUMBER",
        "INVALID_PRODUCER_EPOCH",
        "INVALID_TXN_STATE",
        "INVALID_PRODUCER_ID_MAPPING",
        "INVALID_TRANSACTION_TIMEOUT",
        "CONCURRENT_TRANSACTIONS",
        "TRANSACTION_COORDINATOR_FENCED",
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        "SECURITY_DISABLED",
        "OPERATION_NOT_ATTEMPTED",
        "KAFKA_STORAGE_ERROR",
        "LOG_DIR_NOT_FOUND",
        "SASL_AUTHENTICATION_FAILED",
        "UNKNOWN_PRODUCER_ID",
        "REASSIGNMENT_IN_PROGRESS",
        "DELEGATION_TOKEN_AUTH_DISABLED",
        "DELEGATION_TOKEN_NOT_FOUND",
        "DELEGATION_TOKEN_OWNER_MISMATCH",
        "DELEGATION_TOKEN_REQUEST_NOT_ALLOWED",
        "DELEGATION_TOKEN_AUTHORIZATION_FAILED",
        "DELEGATION_TOKEN_EXPIRED",
        "INVALID_PRINCIPAL_TYPE",
        "NON_EMPTY_GROUP",
        "GROUP_ID_NOT_FOUND",
        "FETCH_SESSION_ID_NOT_FOUND",
        "INVALID_FETCH_SESSION_EPOCH",
        "LISTENER_NOT_FOUND",
        "TOPIC_DELETION_DISABLED",
        "FENCED_LEADER_EPOCH",
        "UNKNOWN_LEADER_EPOCH",
        "UNSUPPORTED_COMPRESSION_TYPE",
        "STALE_BROKER_EPOCH",
        "OFFSET_NOT_AVAILABLE",
        "MEMBER_ID_REQUIRED",
        "PREFERRED_LEADER_NOT_AVAILABLE",
        "GROUP_MAX_SIZE_REACHED",
        "FENCED_INSTANCE_ID",
    ];
    match code {
        -1 => "UNKNOWN_SERVER_ERROR".to_string(),
        0.. if (code as usize) < NAMES.len() => NAMES[code as usize].to_string(),
        _ => format!("KAFKA_ERROR_{code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names() {
        assert_eq!(error_code_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_code_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_code_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_code_name(82), "FENCED_INSTANCE_ID");
        assert_eq!(error_code_name(999), "KAFKA_ERROR_999");
    }
}
