-- Every call by one identity (--subject) in a time window.
SELECT toString(time) AS at, id, concat(service, ':', action) AS operation, resource, verdict, status, masked_fields, role, app_id, agent_session, source_ip
FROM {db}.audit FINAL
WHERE kind = 'call' AND subject = {subject} AND time >= toDateTime({since}) AND time < toDateTime({until})
ORDER BY time, id
