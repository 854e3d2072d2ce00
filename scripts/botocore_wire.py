"""The wire names of AWS output values, shared by Veil's generators.

A `Walker` walks a botocore output shape and reports, for every value a
subclass picks (`marks`), its selector in Veil's selector language over the
JSON view the gateway gives policies, with the protocol's wire names:

  json / rest-json   JSON keys (locationName when set), lists `[*]`, maps `.*`
  query              inside <{Operation}Result>; lists `.member[*]` (or the
                     list's locationName), flattened lists `[*]`, maps
                     `.entry[*].value`
  ec2                inside the root; lists `.item[*]`
  rest-xml           inside the root element (or the payload's element)

Anchors carry named paths below a shape (in model names) down the walk, so a
hand-written entry is translated to wire names like the model's own.
"""
import re
import sys

MAX_DEPTH = 14
PLAIN = re.compile(r'^[^.\[\]"*\s]+$')


def step(name):
    return name if PLAIN.match(name) else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def join(path, part):
    return f"{path}.{part}" if path else part


def protocol_of(model):
    meta = model["metadata"]
    protocol = meta.get("protocol")
    if "protocols" in meta and protocol not in meta["protocols"]:
        protocol = meta["protocols"][0]
    return protocol


class Walker:
    """Subclasses say which values to report (`marks`) and may add pending
    paths below a member (`extra`). `anchors` maps a shape name to
    [(steps, style, origin)]: paths below the shape to report too."""

    # Style ranks: when two reasons reach one path, the higher rank is kept.
    RANK = {}

    def __init__(self, model, anchors=None):
        self.shapes = model["shapes"]
        self.protocol = protocol_of(model)
        self.xml = self.protocol in ("query", "ec2", "rest-xml")
        self.anchors = anchors or {}
        self.reached = set()
        self.redundant = set()

    def marks(self, shape, ref):
        """The style of a value of this shape and member reference, or None."""
        raise NotImplementedError

    def extra(self, member, mref):
        """Pending paths below this member, beyond the anchors."""
        return []

    def add(self, out, path, style):
        if self.RANK[style] >= self.RANK.get(out.get(path), -1):
            out[path] = style

    def walk(self, shape_name, path, out, stack, ref=None, pending=()):
        shape = self.shapes[shape_name]
        pending = list(pending) + self.anchors.get(shape_name, [])
        style = self.marks(shape, ref or {})
        if style:
            if path:
                self.add(out, path, style)
            self.redundant.update(origin for steps, _, origin in pending if not steps and origin)
            return
        done = [(style, origin) for steps, style, origin in pending if not steps]
        if done and path:
            for style, origin in done:
                self.add(out, path, style)
                if origin:
                    self.reached.add(origin)
            return
        if shape_name in stack or len(stack) > MAX_DEPTH:
            return
        stack = stack + [shape_name]
        below = lambda first: [(steps[1:], style, origin) for steps, style, origin in pending if steps and steps[0] == first]
        t = shape["type"]
        if t == "structure":
            for member, mref in shape.get("members", {}).items():
                if mref.get("location") in ("header", "headers", "statusCode", "uri", "querystring"):
                    continue
                name = mref.get("locationName", member)
                if self.protocol == "ec2" and "queryName" in mref:
                    name = mref.get("locationName", mref["queryName"])
                sub = below(member) + self.extra(member, mref)
                self.walk(mref["shape"], join(path, step(name)), out, stack, mref, sub)
        elif t == "list":
            mref = shape["member"]
            sub = below("[*]")
            if not self.xml:
                self.walk(mref["shape"], path + "[*]", out, stack, mref, sub)
            elif shape.get("flattened") or (ref or {}).get("flattened"):
                self.walk(mref["shape"], path + "[*]", out, stack, mref, sub)
            else:
                wrapper = mref.get("locationName", "item" if self.protocol == "ec2" else "member")
                self.walk(mref["shape"], join(path, step(wrapper)) + "[*]", out, stack, mref, sub)
        elif t == "map":
            vref = shape["value"]
            for steps, style, origin in pending:
                if steps and steps[0] != "*":
                    # A map's key by name: its value, when it is the last step.
                    if self.xml or len(steps) != 1:
                        sys.exit(f"generate.py: curated {origin}: a map key must be the last step, on a JSON protocol")
                    self.add(out, join(path, step(steps[0])), style)
                    self.reached.add(origin)
            if not self.xml:
                self.walk(vref["shape"], join(path, "*"), out, stack, vref, below("*"))
            else:
                value = vref.get("locationName", "value")
                base = path + "[*]" if shape.get("flattened") else join(path, "entry") + "[*]"
                self.walk(vref["shape"], join(base, step(value)), out, stack, vref, below("*"))

    def operation(self, op):
        """{selector: style} of an operation's output. A payload that is not a
        structure is reported as `**` when it is marked."""
        out = {}
        oref = op.get("output")
        if not oref:
            return out
        shape = self.shapes[oref["shape"]]
        payload = shape.get("payload")
        if payload:
            pref = shape["members"][payload]
            target = self.shapes[pref["shape"]]
            if target["type"] == "structure":
                self.walk(pref["shape"], "", out, [], pref)
            else:
                style = self.marks(target, pref)
                if style:
                    out["**"] = style
        else:
            self.walk(oref["shape"], "", out, [], oref)
        return out
