-- Masked-field counts per identity: who is being shown secrets-bearing responses.
SELECT subject, sum(masked_fields) AS masked_total, countIf(masked_fields > 0) AS calls_with_masks, count() AS calls
FROM {db}.audit FINAL
WHERE kind = 'call' AND time >= toDateTime({since}) AND time < toDateTime({until})
  AND ({subject} = '' OR subject = {subject})
GROUP BY subject
ORDER BY masked_total DESC, subject
