"""A Python policy that misbehaves on purpose, for the host's tests: the
interpreter languages get the same limits and fail-closed treatment as Rust.
The config's `mode` picks the misbehaviour; `trigger` (when set) makes it
misbehave only for calls whose action equals it; `modes` (when set) maps
actions to modes instead. Output modes, in both hooks unless named for one:
`print` (stdout and stderr, then allow), `print-mb` (a megabyte, then
allow), `raise-request` / `raise-response` (an exception with a message in
that hook)."""

import sys

from veil_policy import Policy, ResponseDecision, Verdict, export


def recurse(n):
    return recurse(n + 1) + 1


def mode_of(req):
    config = req.config if isinstance(req.config, dict) else {}
    modes = config.get("modes")
    if isinstance(modes, dict):  # actions to modes: one gateway runs every mode
        return modes.get(req.action, "allow")
    trigger = config.get("trigger")
    if trigger is not None and trigger != req.action:
        return "allow"
    return config.get("mode", "allow")


def speak(mode, hook, req):
    if mode == "print":
        print(f"hostile-python {hook} stdout: {req.action}")
        print(f"hostile-python {hook} stderr: \x1b[31mred\x1b[0m", file=sys.stderr)
    elif mode == "print-mb":
        line = "m" * 1023
        for _ in range(1024):
            print(line)
        print(f"hostile-python {hook} printed a megabyte", file=sys.stderr)


class Hostile(Policy):
    name = "hostile-python"
    version = "0.0.1"

    def on_request(self, req):
        mode = mode_of(req)
        speak(mode, "on-request", req)
        if mode == "trap":
            raise RuntimeError("hostile policy raises on purpose")
        if mode == "raise-request":
            raise ValueError("hostile-python raises in on-request on purpose")
        if mode == "spin":
            while True:
                pass
        if mode == "membomb":
            # Far past the memory cap in one request: the allocation fails
            # at once instead of spending the CPU deadline filling memory.
            hoard = []
            while True:
                hoard.append(bytearray(256 << 20))
        if mode == "recursion":
            sys.setrecursionlimit(10_000_000)
            recurse(0)
        if mode == "filesystem":
            try:
                open("/etc/passwd").read()
            except OSError:
                return Verdict.deny("filesystem access refused as expected")
            raise RuntimeError("filesystem access was granted")
        return Verdict.allow()

    def on_response(self, req, resp):
        mode = mode_of(req)
        speak(mode, "on-response", req)
        if mode == "raise-response":
            raise ValueError("hostile-python raises in on-response on purpose")
        return ResponseDecision.allow()


WitWorld = export(Hostile)
