"""`secrets-by-team` in Python: secret values are visible only to the team
that owns them; the same rules and configuration as the Rust policy in
policies/secrets-by-team (see its docs). Built by `make policies` into
target/policies/python/secrets-by-team.wasm."""

from veil_policy import Mask, Policy, PolicyError, ResponseDecision, Scope, export

SECRET_FIELDS = ["SecretString", "SecretBinary"]


def str_at(v, key):
    s = v.get(key) if isinstance(v, dict) else None
    return s if isinstance(s, str) else None


def first(*values):
    """The first value that is not None (Rust's `Option::or`)."""
    return next((v for v in values if v is not None), None)


def items(v, key):
    s = v.get(key) if isinstance(v, dict) else None
    return s if isinstance(s, list) else []


def owned_prefixes(req, groups):
    owners = req.config.get("owners") if isinstance(req.config, dict) else None
    if owners is None:
        return []
    if not isinstance(owners, dict):
        raise PolicyError("config `owners` must be an object of group -> [prefix]")
    owned = []
    for g in groups:
        prefixes = owners.get(g)
        if prefixes is None:
            continue
        if not isinstance(prefixes, list):
            raise PolicyError("owners: each group maps to a list of prefixes")
        for p in prefixes:
            if not isinstance(p, str):
                raise PolicyError("owners: prefixes must be strings")
            owned.append(p)
    return owned


class SecretsByTeam(Policy):
    name = "secrets-by-team"
    version = "1.0.0"

    def scope(self, config):
        """Only the responses that carry secret values."""
        return Scope(on_request=[], on_response=[
            "secretsmanager:GetSecretValue",
            "secretsmanager:BatchGetSecretValue",
            "ssm:GetParameter",
            "ssm:GetParameters",
            "ssm:GetParametersByPath",
            "ssm:GetParameterHistory",
        ])

    def on_response(self, req, resp):
        claim = first(str_at(req.config, "groups_claim"), "groups")
        groups = req.claim_list(claim)
        admins = req.config_list("admin_groups", ["secrets-admin"])
        if any(g in admins for g in groups):
            return ResponseDecision.allow()
        owned = owned_prefixes(req, groups)
        body = resp.body
        masks = []

        def mask_item(prefix, name, fields):
            if not (name and any(name.startswith(p) for p in owned)):
                masks.extend(Mask.redact(f"{prefix}{f}") for f in fields)

        op = (req.service, req.action)
        if op == ("secretsmanager", "GetSecretValue"):
            name = first(str_at(body, "Name"), req.param_str("SecretId"), "")
            mask_item("", name, SECRET_FIELDS)
        elif op == ("secretsmanager", "BatchGetSecretValue"):
            for i, item in enumerate(items(body, "SecretValues")):
                mask_item(f"SecretValues[{i}].", first(str_at(item, "Name"), ""), SECRET_FIELDS)
        elif op == ("ssm", "GetParameter"):
            name = str_at(body.get("Parameter") if isinstance(body, dict) else None, "Name")
            mask_item("Parameter.", first(name, req.param_str("Name"), ""), ["Value"])
        elif req.service == "ssm" and req.action in ("GetParameters", "GetParametersByPath", "GetParameterHistory"):
            fallback = first(req.param_str("Name"), "")
            for i, item in enumerate(items(body, "Parameters")):
                name = str_at(item, "Name")
                mask_item(f"Parameters[{i}].", first(name, fallback), ["Value"])
        return ResponseDecision.masks(masks)


WitWorld = export(SecretsByTeam)
