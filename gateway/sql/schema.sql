-- Veil audit schema. Runs on ClickHouse 18.16 (Debian) and current releases:
-- plain types only (no DateTime64, Map, JSON). Replays of a batch after a
-- failed acknowledgement collapse by id (ReplacingMergeTree on the sort key);
-- the compliance queries read with FINAL so they never count a row twice.
-- Every statement is idempotent; `veil audit migrate` and gateway start run them.
CREATE DATABASE IF NOT EXISTS {db};
CREATE TABLE IF NOT EXISTS {db}.audit
(
    id String,
    time DateTime,
    ts_ms UInt64,
    kind String,
    instance String,
    issuer String,
    subject String,
    claims String,
    source_ip String,
    service String,
    action String,
    region String,
    resource String,
    params String,
    verdict String,
    reasons Array(String),
    policy_names Array(String),
    policy_versions Array(String),
    policy_sha256s Array(String),
    approval_id String,
    approval_reviewers Array(String),
    approval_decided_ms UInt64,
    status UInt16,
    aws_request_id String,
    response String,
    response_truncated UInt8,
    masked_fields UInt32,
    bytes_in UInt64,
    bytes_out UInt64,
    auth_us UInt64,
    policy_us UInt64,
    upstream_us UInt64,
    mask_us UInt64,
    total_us UInt64,
    user_agent String,
    app_id String,
    traceparent String,
    trace_id String,
    agent_session String,
    role_session String,
    error String,
    role String,
    params_truncated UInt8
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (time, subject, id);
