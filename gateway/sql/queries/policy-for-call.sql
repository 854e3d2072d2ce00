-- The policy versions in force for one call (--id), and what they decided.
SELECT id, toString(time) AS at, subject, concat(service, ':', action) AS operation, verdict, policy_names, policy_versions, policy_sha256s, reasons
FROM {db}.audit FINAL
WHERE id = {id}
