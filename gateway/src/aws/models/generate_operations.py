#!/usr/bin/env python3
"""Generate operations.json: every operation name of every AWS service, by
SigV4 signing name, from botocore's service models (pinned in
tests/requirements.txt; regenerate after bumping it, with services.json:
`python3 gateway/src/aws/models/generate_operations.py`).

The gateway uses it as a closed set: a service or action label of a metric
is a name from this table or `unknown`, so that nothing a caller sends
becomes a label (gateway/src/aws/operations.rs).
"""
import json
import os
import sys

import botocore
from botocore.loaders import Loader


def main():
    loader = Loader()
    out = {}
    for name in sorted(loader.list_available_services("service-2")):
        model = loader.load_service_model(name, "service-2")
        meta = model["metadata"]
        signing = meta.get("signingName") or meta["endpointPrefix"]
        out.setdefault(signing, set()).update(model["operations"])
    dest = os.path.join(os.path.dirname(os.path.abspath(__file__)), "operations.json")
    with open(dest, "w") as f:
        f.write('{"_source": "botocore %s", "operations": {\n' % botocore.__version__)
        items = sorted(out.items())
        for i, (k, ops) in enumerate(items):
            f.write("%s: %s%s\n" % (json.dumps(k), json.dumps(sorted(ops), separators=(",", ":")), "," if i + 1 < len(items) else ""))
        f.write("}}\n")
    print("wrote %s: %d signing names, %d operations" % (dest, len(out), sum(len(v) for v in out.values())), file=sys.stderr)


if __name__ == "__main__":
    main()
