"""Python SDK for Veil policies.

A Veil policy is a WebAssembly component exporting the
``veil:policy/scoped-policy`` world of ``wit/veil-policy.wit``. componentize-py generates the bindings
(the ``wit_world`` package) from that one WIT file when it builds the
component; this package wraps them in the same small API as the Rust SDK::

    from veil_policy import Policy, Mask, ResponseDecision, Scope, Verdict, export

    class NoIamWrites(Policy):
        name = "no-iam-writes"
        version = "1.0.0"

        def scope(self, config):  # optional; the default is every operation
            return Scope(on_request=["iam:*"], on_response=["*"])

        def on_request(self, req):
            if req.service == "iam" and not req.action.startswith(("Get", "List")):
                return Verdict.deny(f"{req.qualified_action} is not allowed through Veil")
            return Verdict.allow()

        def on_response(self, req, resp):
            if req.has_group("secrets-admin"):
                return ResponseDecision.allow()
            return ResponseDecision.masks([Mask.redact("**.SecretAccessKey")])

    WitWorld = export(NoIamWrites)

Helpers behave exactly like the Rust SDK's, so a policy ported between the
two languages gives byte-for-byte the same decisions. An exception escaping a
hook traps the instance; the gateway treats a trap as a deny (fail closed).
"""

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, List, Optional

__all__ = [
    "PolicyError",
    "Policy", "Request", "Response", "Verdict", "Mask", "ResponseDecision", "Config", "Scope", "Finding",
    "export", "glob", "ascii_lower", "rust_trim", "sorted_items", "Network", "is_world_open", "Arn",
]


class PolicyError(Exception):
    """A policy input or configuration the policy cannot work with."""


@dataclass(frozen=True)
class Verdict:
    """A decision on a request: ``allow``, ``deny`` or ``approval-required``."""

    kind: str
    reason: str = ""

    @staticmethod
    def allow() -> "Verdict":
        return Verdict("allow")

    @staticmethod
    def deny(reason: str) -> "Verdict":
        return Verdict("deny", reason)

    @staticmethod
    def approval_required(reason: str) -> "Verdict":
        return Verdict("approval-required", reason)


@dataclass(frozen=True)
class Mask:
    """One masking instruction: a selector and a style (redact, hash, partial)."""

    path: str
    style: str = "redact"

    @staticmethod
    def redact(path: str) -> "Mask":
        return Mask(path, "redact")

    @staticmethod
    def hash(path: str) -> "Mask":
        return Mask(path, "hash")

    @staticmethod
    def partial(path: str) -> "Mask":
        return Mask(path, "partial")


@dataclass
class ResponseDecision:
    """A decision on a response: masks to apply, or a deny."""

    deny: Optional[str] = None
    mask_list: List[Mask] = field(default_factory=list)

    @staticmethod
    def allow() -> "ResponseDecision":
        return ResponseDecision()

    @staticmethod
    def masks(masks: List[Mask]) -> "ResponseDecision":
        return ResponseDecision(None, list(masks))

    @staticmethod
    def denied(reason: str) -> "ResponseDecision":
        return ResponseDecision(reason, [])


class _Lazy:
    """JSON text parsed on first use (most hooks never read every input)."""

    __slots__ = ("_what", "_text", "_value", "_parsed")

    def __init__(self, what: str, text: Optional[str] = None, value: Any = None):
        self._what, self._text, self._value = what, text, value
        self._parsed = text is None

    def get(self) -> Any:
        if not self._parsed:
            try:
                self._value = json.loads(self._text)
            except ValueError as e:
                raise PolicyError(f"veil: {self._what} is not valid JSON: {e}") from None
            self._parsed = True
        return self._value


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


@dataclass
class Scope:
    """Which operations each hook runs for: ``service:Action`` patterns, ``*``
    matching any run of characters, case ignored. The gateway skips a hook
    for other calls, as if it had allowed them."""

    on_request: List[str] = field(default_factory=lambda: ["*"])
    on_response: List[str] = field(default_factory=lambda: ["*"])

    @classmethod
    def all(cls) -> "Scope":
        """Both hooks for every operation."""
        return cls()


class Config:
    """A policy's configuration (the JSON object from the gateway's config),
    parsed on first use."""

    def __init__(self, value: Any = None, *, text: Optional[str] = None):
        self._lazy = _Lazy("config-json", text) if text is not None else _Lazy("config-json", value={} if value is None else value)

    def get(self) -> Any:
        """The configuration as JSON."""
        return self._lazy.get()

    def list(self, key: str, default: List[str]) -> List[str]:
        """A list of strings under ``key``, or ``default`` when the key is
        absent. Anything else raises (a trap: the gateway refuses the policy
        or denies, and reports the misconfiguration)."""
        config = self.get()
        v = _get(config, key)
        if v is None and not (isinstance(config, dict) and key in config):
            return list(default)
        if isinstance(v, list) and all(isinstance(s, str) for s in v):
            return list(v)
        raise PolicyError(f"config `{key}` must be a list of strings")


class Request:
    """One call as a policy sees it: identity, operation, parameters, config."""

    def __init__(self, service: str, action: str, claims: Any = None, params: Any = None,
                 config: Any = None, *, issuer: str = "https://issuer.test",
                 subject: Optional[str] = None, region: str = "us-east-1",
                 resource: Optional[str] = None):
        """A request from parsed parts (for unit tests of policies)."""
        claims = {} if claims is None else claims
        self.issuer = issuer
        sub = _get(claims, "sub")
        self.subject = subject if subject is not None else (sub if isinstance(sub, str) else "test")
        self.service, self.action, self.region, self.resource = service, action, region, resource
        self._claims = _Lazy("claims-json", value=claims)
        self._params = _Lazy("params-json", value={} if params is None else params)
        self._config = Config(config)

    @classmethod
    def _from_wit(cls, c: Any) -> "Request":
        req = cls.__new__(cls)
        req.issuer, req.subject = c.identity.issuer, c.identity.subject
        op = c.operation
        req.service, req.action, req.region, req.resource = op.service, op.action, op.region, op.resource
        req._claims = _Lazy("claims-json", c.identity.claims_json)
        req._params = _Lazy("params-json", c.params_json)
        req._config = Config(text=c.config_json)
        return req

    @property
    def claims(self) -> Any:
        """All claims of the token."""
        return self._claims.get()

    @property
    def params(self) -> Any:
        """Request parameters."""
        return self._params.get()

    @property
    def config(self) -> Any:
        """This policy's configuration (``{}`` when none)."""
        return self._config.get()

    @property
    def qualified_action(self) -> str:
        """``service:Action``, the form IAM policies use (``iam:CreateUser``)."""
        return f"{self.service}:{self.action}"

    def claim_str(self, name: str) -> Optional[str]:
        """A string claim, if present and a string."""
        v = _get(self.claims, name)
        return v if isinstance(v, str) else None

    def claim_list(self, name: str) -> List[str]:
        """A claim holding a list of strings (or one string of names
        separated by spaces or commas)."""
        v = _get(self.claims, name)
        if isinstance(v, list):
            return [s for s in v if isinstance(s, str)]
        if isinstance(v, str):
            return [g for g in v.replace(",", " ").split(" ") if g]
        return []

    @property
    def groups(self) -> List[str]:
        """The caller's groups: the ``groups`` claim."""
        return self.claim_list("groups")

    def has_group(self, group: str) -> bool:
        """Whether the caller is in ``group``."""
        return group in self.groups

    def param_str(self, name: str) -> Optional[str]:
        """A string parameter of the request."""
        v = _get(self.params, name)
        return v if isinstance(v, str) else None

    def config_list(self, key: str, default: List[str]) -> List[str]:
        """A list of strings from the policy config, or ``default`` when the
        key is absent; see ``Config.list``."""
        return self._config.list(key, default)


@dataclass(frozen=True)
class Finding:
    """A string of the response body that holds a secret, found by the
    gateway's native detectors: its selector ``path``, ``kind``
    (``"access-key-id"`` or ``"secret"``) and ``detector`` name."""

    path: str
    kind: str
    detector: str

    def mask(self) -> Mask:
        """The mask its kind calls for: hash a lone access key id, redact a secret."""
        return Mask.hash(self.path) if self.kind == "access-key-id" else Mask.redact(self.path)


# True while export() warms the hooks up at build time, when there is no
# gateway to ask for findings (an import called then aborts the build).
_warming = False


def _host_findings() -> List[Finding]:
    if _warming:
        return []
    from wit_world.imports import scan  # generated from the WIT at build time

    kinds = {scan.FindingKind.ACCESS_KEY_ID: "access-key-id", scan.FindingKind.SECRET: "secret"}
    return [Finding(f.path, kinds[f.kind], f.detector) for f in scan.findings()]


class Response:
    """The upstream response as a policy sees it."""

    def __init__(self, status: int, body: Any, findings: Optional[List[Finding]] = None):
        """A response from a parsed body and the findings the detectors would
        report (for unit tests of policies)."""
        self.status = status
        self._body = _Lazy("body-json", value=body)
        self._findings = list(findings or [])

    @classmethod
    def _from_wit(cls, r: Any) -> "Response":
        resp = cls.__new__(cls)
        resp.status, resp._body, resp._findings = r.status, _Lazy("body-json", r.body_json), None
        return resp

    @property
    def body(self) -> Any:
        """The body as JSON."""
        return self._body.get()

    def findings(self) -> List[Finding]:
        """Every string of the body that holds a secret, in document order,
        found by the gateway's detectors at native speed (far cheaper than
        walking ``body`` here)."""
        if self._findings is None:
            self._findings = _host_findings()
        return self._findings


class Policy:
    """What a Veil policy implements: a name, a semver version, two hooks and
    optionally the scope of each hook."""

    name: str = ""
    version: str = ""

    def scope(self, config: Config) -> Scope:
        return Scope.all()

    def on_request(self, req: Request) -> Verdict:
        return Verdict.allow()

    def on_response(self, req: Request, resp: Response) -> ResponseDecision:
        return ResponseDecision.allow()


def export(policy_cls: type) -> type:
    """The ``WitWorld`` class componentize-py exports, wrapping a Policy."""
    from wit_world import WitWorld as _World  # generated from the WIT at build time
    from wit_world.imports import types as wit

    policy = policy_cls()
    styles = {"redact": wit.MaskStyle.REDACT, "hash": wit.MaskStyle.HASH, "partial": wit.MaskStyle.PARTIAL}

    class World(_World):
        def info(self):
            return wit.PolicyInfo(name=policy.name, version=policy.version)

        def scope(self, config_json):
            s = policy.scope(Config(text=config_json))
            return wit.Scope(on_request=list(s.on_request), on_response=list(s.on_response))

        def on_request(self, c):
            v = policy.on_request(Request._from_wit(c))
            if v.kind == "allow":
                return wit.Verdict_Allow()
            if v.kind == "deny":
                return wit.Verdict_Deny(v.reason)
            if v.kind == "approval-required":
                return wit.Verdict_ApprovalRequired(v.reason)
            raise PolicyError(f"unknown verdict {v.kind!r}")

        def on_response(self, c, r):
            d = policy.on_response(Request._from_wit(c), Response._from_wit(r))
            return wit.ResponseVerdict(
                deny=d.deny,
                masks=[wit.Mask(path=m.path, style=styles[m.style]) for m in d.mask_list],
            )

    global _warming
    _warming = True
    try:
        _warm_up(World(), wit)
    finally:
        _warming = False
    return World


def _warm_up(world: Any, wit: Any) -> None:
    """Run both hooks on sample calls while componentize-py builds the
    component. It snapshots the interpreter after the app's import, and every
    call starts from that snapshot on a fresh instance: code first run here
    (lazy imports, the interpreter's specialised bytecode, caches) is in the
    snapshot instead of being paid on every call. The samples hold no
    caller's data, so nothing of one caller can reach another."""
    samples = [
        ("secretsmanager", "GetSecretValue", {"SecretId": "warm-up"}, {"Name": "warm-up", "SecretString": "{}"}),
        ("ssm", "GetParameters", {"Names": ["/warm-up"]}, {"Parameters": [{"Name": "/warm-up", "Value": "x"}]}),
        ("ec2", "AuthorizeSecurityGroupIngress", {"IpPermissions": [{"IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]}, {}),
        ("sts", "AssumeRole", {"RoleArn": "arn:aws:iam::123456789012:role/warm-up"}, {}),
    ]
    try:
        world.scope("{}")
    except Exception:
        pass
    for service, action, params, body in samples:
        call = wit.Call(
            identity=wit.Identity(issuer="https://issuer.test", subject="warm-up",
                                  claims_json='{"sub":"warm-up","groups":["warm-up"]}'),
            operation=wit.Operation(service=service, action=action, region="us-east-1", resource=None),
            params_json=json.dumps(params), config_json="{}",
        )
        for _ in range(10):
            try:
                world.on_request(call)
                world.on_response(call, wit.Response(status=200, body_json=json.dumps(body)))
            except Exception:  # a policy may reject a sample; only warming matters
                pass


# Helpers with exactly the Rust standard library's semantics, so that ported
# policies decide identically.

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Rust's char::is_whitespace (Unicode White_Space), which str::trim strips.
_RUST_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def ascii_lower(s: str) -> str:
    """Lower-case ASCII letters only (as IAM compares action names)."""
    return s.translate(_ASCII_LOWER)


def rust_trim(s: str) -> str:
    """Strip Unicode White_Space from both ends."""
    return s.strip(_RUST_WHITESPACE)


def sorted_items(obj: dict):
    """An object's entries in key order (the order the Rust SDK sees them)."""
    return sorted(obj.items(), key=lambda kv: kv[0])


def glob(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern``, where ``*`` matches any run."""
    parts = pattern.split("*")
    first, parts = parts[0], parts[1:]
    if not text.startswith(first):
        return False
    rest = text[len(first):]
    if not parts:
        return rest == ""
    last, middle = parts[-1], parts[:-1]
    for part in middle:
        i = rest.find(part)
        if i < 0:
            return False
        rest = rest[i + len(part):]
    return len(rest) >= len(last) and rest.endswith(last)


# Values with many spellings (the Rust SDK's `net` module, same answers).

_ASCII_WS = " \t\n\x0c\r"
_DIGITS = frozenset("0123456789")


def _parse_v4(text: str) -> Optional[int]:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    out = 0
    for part in parts:
        if not 1 <= len(part) <= 3 or not set(part) <= _DIGITS or int(part) > 255:
            return None
        out = (out << 8) | int(part)
    return out


class Network:
    """An IPv4 or IPv6 network (an address is a network of one)."""

    def __init__(self, bits: int, v4: bool, prefix: int):
        self.bits, self.v4, self.prefix = bits, v4, prefix

    @staticmethod
    def parse(text: str) -> Optional["Network"]:
        """``a.b.c.d/n``, an IPv6 network ``x::y/n`` or a bare address;
        surrounding ASCII whitespace ignored. ``None`` for anything else."""
        addr, sep, prefix = text.strip(_ASCII_WS).partition("/")
        bits = _parse_v4(addr)
        v4 = bits is not None
        if not v4:
            if ":" not in addr or "%" in addr:
                return None
            try:
                bits = int(ipaddress.IPv6Address(addr))
            except ValueError:
                return None
        width = 32 if v4 else 128
        if not sep:
            length = width
        elif 1 <= len(prefix) <= 3 and set(prefix) <= _DIGITS and int(prefix) <= width:
            length = int(prefix)
        else:
            return None
        return Network(bits, v4, length)

    def _mask(self) -> int:
        width = 32 if self.v4 else 128
        return ((1 << width) - 1) ^ ((1 << (width - self.prefix)) - 1)

    def contains(self, other: "Network") -> bool:
        """Whether ``other`` lies wholly inside this network."""
        m = self._mask()
        return self.v4 == other.v4 and other.prefix >= self.prefix and (other.bits & m) == (self.bits & m)

    def is_world_open(self) -> bool:
        """Every IPv4 address, every global unicast IPv6 address
        (``2000::/3``) or every IPv4 address mapped into IPv6."""
        if self.prefix == 0:
            return True
        if self.v4:
            return False
        return self.contains(Network(0x2000 << 112, False, 3)) or self.contains(Network(0xFFFF << 32, False, 96))


def is_world_open(text: str) -> bool:
    """Whether ``text`` is a network (any spelling) open to the whole internet."""
    n = Network.parse(text)
    return n is not None and n.is_world_open()


@dataclass
class Arn:
    """An ARN's parts: ``arn:partition:service:region:account:resource``."""

    partition: str
    service: str
    region: str
    account: str
    resource: str

    @staticmethod
    def parse(text: str) -> Optional["Arn"]:
        parts = text.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn" or not parts[1] or not parts[2] or not parts[5]:
            return None
        return Arn(*parts[1:])

    def resource_type(self):
        """``role/path/admin`` → ``("role", "path/admin")``; ``None`` without a separator."""
        cut = [i for i in (self.resource.find("/"), self.resource.find(":")) if i >= 0]
        if not cut:
            return None
        i = min(cut)
        return self.resource[:i], self.resource[i + 1:]
