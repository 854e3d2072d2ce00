-- Approvals: who asked, for what, who decided, and how long the decision took.
SELECT
    approval_id,
    anyIf(subject, verdict = 'requested') AS requester,
    anyIf(concat(service, ':', action), verdict = 'requested') AS operation,
    anyIf(arrayStringConcat(approval_reviewers, ','), verdict IN ('approved', 'denied')) AS reviewers,
    anyIf(verdict, verdict IN ('approved', 'denied', 'expired')) AS decision,
    countIf(verdict = 'used') AS used,
    minIf(ts_ms, verdict = 'requested') AS requested_ms,
    maxIf(approval_decided_ms, verdict IN ('approved', 'denied')) AS decided_ms,
    if(decided_ms > requested_ms AND requested_ms > 0, (decided_ms - requested_ms) / 1000, 0) AS latency_s
FROM {db}.audit FINAL
WHERE kind = 'approval' AND time >= toDateTime({since}) AND time < toDateTime({until})
  AND ({subject} = '' OR subject = {subject} OR has(approval_reviewers, {subject}))
GROUP BY approval_id
ORDER BY requested_ms, approval_id
