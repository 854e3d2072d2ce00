-- Who accessed which secrets: every read of a Secrets Manager secret, an SSM
-- parameter or a KMS decryption, with the outcome and how much was masked.
SELECT toString(time) AS at, subject, concat(service, ':', action) AS operation, resource, verdict, masked_fields, approval_id, agent_session, app_id
FROM {db}.audit FINAL
WHERE kind = 'call' AND time >= toDateTime({since}) AND time < toDateTime({until})
  AND ({subject} = '' OR subject = {subject})
  AND ((service = 'secretsmanager' AND action IN ('GetSecretValue', 'BatchGetSecretValue'))
    OR (service = 'ssm' AND action IN ('GetParameter', 'GetParameters', 'GetParametersByPath', 'GetParameterHistory'))
    OR (service = 'kms' AND action IN ('Decrypt', 'GenerateDataKey')))
ORDER BY time, id
