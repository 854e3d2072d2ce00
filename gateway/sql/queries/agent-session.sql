-- Every AWS call made within one agent session or trace (--session): matches
-- the X-Veil-Agent-Session header, the W3C trace id, the SDK app id
-- (AWS_SDK_UA_APP_ID) or the STS role session name (AWS_ROLE_SESSION_NAME).
SELECT toString(time) AS at, id, subject, concat(service, ':', action) AS operation, resource, verdict, status, masked_fields, agent_session, trace_id, app_id, role, role_session
FROM {db}.audit FINAL
WHERE kind = 'call' AND {session} != '' AND time >= toDateTime({since}) AND time < toDateTime({until})
  AND (agent_session = {session} OR trace_id = {session} OR app_id = {session} OR role_session = {session})
ORDER BY time, id
