#!/usr/bin/env python3
"""Generate services.json, Veil's table of AWS operations, from botocore's
service models (botocore is pinned in tests/requirements.txt; regenerate after
bumping it: `python3 gateway/src/aws/models/generate.py`).

For every service, keyed by its SigV4 signing name, one entry per model:
  protocol     json | rest-json | rest-xml | query | ec2 | smithy-rpc-v2-cbor
  protocols    every protocol the service speaks, when more than one (CloudWatch:
               smithy-rpc-v2-cbor, json, query): clients pick one, and Veil reads
               each call in the protocol its request is in
  prefix       endpoint prefix (host name part: <prefix>.<region>.amazonaws.com)
  global       true when the service has one global endpoint (iam, route53 …)
  target       X-Amz-Target prefix (json protocol)
  json         its JSON version: a call in JSON goes upstream as
               application/x-amz-json-<json>
  ops          rest protocols: [name, method, requestUri, [required headers]?,
               {header: input member}?] (`prefix*` for a prefix of headers;
               `?key` a query key and `{label}` a URI label whose member is
               named otherwise)
  streaming    {operation: payload member}: response bodies that are a stream
               of bytes (passed through unparsed, or shown to policies as text
               under the member's name when small), or null for a stream of
               events (always passed through)
  payloads     {operation: [member, kind]}: rest-json and rest-xml operations
               whose request body is one input member (kind blob, string or
               structure) rather than the input's members together
  blobs        {operation: [selectors]}: output values of type blob (base64 text
               on the wire), in wire names, so a mask keeps them base64

operations.json: every operation name per signing name, a closed set for
metric labels (gateway/src/aws/operations.rs);

and partitions.json, from botocore's endpoints data: per partition, the DNS
suffix of its endpoints and the region prefixes its region pattern accepts
(`^(us|eu)\-\w+\-\d+$` becomes ["us", "eu"]: a region is <prefix>-<word>-<digits>).
"""
import json
import os
import re
import sys

import botocore
from botocore.loaders import Loader

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "scripts"))
from botocore_wire import Walker  # noqa: E402

class BlobWalker(Walker):
    """Reports blob values: base64 text in JSON and XML bodies."""

    RANK = {"blob": 0}

    def marks(self, shape, ref):
        return "blob" if shape["type"] == "blob" else None


GLOBAL = {"iam", "route53", "cloudfront", "organizations", "globalaccelerator", "shield", "waf", "networkmanager"}

def main():
    loader = Loader()
    out, operations = {}, {}
    for name in sorted(loader.list_available_services("service-2")):
        model = loader.load_service_model(name, "service-2")
        meta = model["metadata"]
        protocol = meta.get("protocol")
        if "protocols" in meta and protocol not in meta["protocols"]:
            protocol = meta["protocols"][0]
        signing = meta.get("signingName") or meta["endpointPrefix"]
        shapes = model["shapes"]
        entry = {"model": name, "protocol": protocol, "prefix": meta["endpointPrefix"]}
        if len(meta.get("protocols", [])) > 1:
            entry["protocols"] = meta["protocols"]
        if meta["endpointPrefix"] in GLOBAL:
            entry["global"] = True
        if protocol == "json" or "targetPrefix" in meta:
            entry["target"] = meta.get("targetPrefix", "")
            entry["json"] = meta.get("jsonVersion", "1.0")
        ops, streaming, blobs, payloads = [], {}, {}, {}
        walker = BlobWalker(model)
        for op_name, op in sorted(model["operations"].items()):
            http = op.get("http", {})
            if protocol in ("rest-json", "rest-xml"):
                row = [op_name, http.get("method", "POST"), http.get("requestUri", "/")]
                # Required request headers tell apart operations that share a
                # method and URI (s3 CopyObject vs PutObject).
                headers = []
                if "input" in op:
                    shape = shapes[op["input"]["shape"]]
                    for member in shape.get("required", []):
                        ref = shape["members"][member]
                        if ref.get("location") == "header":
                            headers.append(ref["locationName"].lower())
                # Every header the operation's input reads, by member: Veil
                # shows them to policies as parameters and forwards only
                # these (a trailing `*` marks a prefix, `x-amz-meta-*`).
                # And each query key (`?prefix`) or URI label (`{restapi_id}`)
                # named otherwise than its member: policies see the member.
                bound = {}
                if "input" in op:
                    for member, ref in shapes[op["input"]["shape"]].get("members", {}).items():
                        if ref.get("location") == "header":
                            bound[ref["locationName"].lower()] = member
                        elif ref.get("location") == "headers":
                            bound[ref.get("locationName", "").lower() + "*"] = member
                        elif ref.get("location") == "querystring" and ref.get("locationName", member) != member:
                            bound["?" + ref["locationName"]] = member
                        elif ref.get("location") == "uri" and ref.get("locationName", member) != member:
                            bound["{" + ref["locationName"] + "}"] = member
                if headers or bound:
                    row.append(sorted(headers))
                if bound:
                    row.append(dict(sorted(bound.items())))
                ops.append(row)
                if "input" in op:
                    shape = shapes[op["input"]["shape"]]
                    payload = shape.get("payload")
                    if payload:
                        kind = shapes[shape["members"][payload]["shape"]]["type"]
                        payloads[op_name] = [payload, kind if kind in ("blob", "string") else "structure"]
            out_ref = op.get("output")
            if out_ref:
                shape = shapes[out_ref["shape"]]
                payload = shape.get("payload")
                if payload:
                    target = shapes[shape["members"][payload]["shape"]]
                    if target.get("eventstream") or shape["members"][payload].get("eventstream"):
                        streaming[op_name] = None
                    elif target.get("streaming") or target.get("type") == "blob":
                        streaming[op_name] = payload
            if op_name not in streaming:
                paths = sorted(walker.operation(op))
                if paths:
                    blobs[op_name] = paths
        if ops:
            entry["ops"] = ops
        if payloads:
            entry["payloads"] = payloads
        if streaming:
            entry["streaming"] = streaming
        if blobs:
            entry["blobs"] = blobs
        out.setdefault(signing, []).append(entry)
        operations.setdefault(signing, set()).update(model["operations"])
    write_table("services.json", "services", out)
    write_table("operations.json", "operations", {k: sorted(v) for k, v in operations.items()})
    write_partitions(loader)


def write_table(file, key, table):
    """One line per signing name, sorted, so a regeneration diffs by service."""
    dest = os.path.join(os.path.dirname(os.path.abspath(__file__)), file)
    with open(dest, "w") as f:
        f.write('{"_source": "botocore %s", "%s": {\n' % (botocore.__version__, key))
        items = sorted(table.items())
        for i, (k, v) in enumerate(items):
            f.write("%s: %s%s\n" % (json.dumps(k), json.dumps(v, separators=(",", ":")), "," if i + 1 < len(items) else ""))
        f.write("}}\n")
    print("wrote %s: %d signing names" % (dest, len(table)), file=sys.stderr)


def write_partitions(loader):
    """partitions.json: what Veil needs to build endpoint host names."""
    parts = []
    for p in loader.load_data("endpoints")["partitions"]:
        m = re.fullmatch(r"\^(?:\(([a-z|]+)\)|([a-z()\\-]+?))\\-\\w\+\\-\\d\+\$", p["regionRegex"])
        if not m:
            sys.exit("partition %s: region pattern %r is not of the form ^<prefixes>\\-\\w+\\-\\d+$; teach generate.py" % (p["partition"], p["regionRegex"]))
        if m.group(1):
            prefixes = m.group(1).split("|")
        else:
            prefixes = [m.group(2).replace("\\-", "-")]
        # A prefix with a group inside it (`eusc\-(de)`) is one literal.
        prefixes = [x.replace("(", "").replace(")", "") for x in prefixes]
        parts.append({"partition": p["partition"], "suffix": p["dnsSuffix"], "prefixes": prefixes})
    dest = os.path.join(os.path.dirname(os.path.abspath(__file__)), "partitions.json")
    with open(dest, "w") as f:
        json.dump({"_source": "botocore %s" % botocore.__version__, "partitions": parts}, f, indent=1)
        f.write("\n")
    print("wrote %s: %d partitions" % (dest, len(parts)), file=sys.stderr)

if __name__ == "__main__":
    main()
