-- All denials, by the policy that denied them.
SELECT extract(reason, '^([^:]+)') AS policy, count() AS denials, uniqExact(subject) AS identities, toString(max(time)) AS last_denial
FROM {db}.audit FINAL
ARRAY JOIN reasons AS reason
WHERE kind = 'call' AND verdict = 'deny' AND time >= toDateTime({since}) AND time < toDateTime({until})
  AND ({subject} = '' OR subject = {subject})
GROUP BY policy
ORDER BY denials DESC, policy
