"""A Python policy that misbehaves on purpose, for the host's tests: the
interpreter languages get the same limits and fail-closed treatment as Rust.
The config's `mode` picks the misbehaviour."""

from veil_policy import Policy, Verdict, export


def recurse(n):
    return recurse(n + 1) + 1


class Hostile(Policy):
    name = "hostile-python"
    version = "0.0.1"

    def on_request(self, req):
        mode = req.config.get("mode", "allow") if isinstance(req.config, dict) else "allow"
        if mode == "trap":
            raise RuntimeError("hostile policy raises on purpose")
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
            import sys
            sys.setrecursionlimit(10_000_000)
            recurse(0)
        if mode == "filesystem":
            try:
                open("/etc/passwd").read()
            except OSError:
                return Verdict.deny("filesystem access refused as expected")
            raise RuntimeError("filesystem access was granted")
        return Verdict.allow()


WitWorld = export(Hostile)
