"""`ferry sim`: the hardware simulator's command line.

`ferry sim link ...` runs and steers fault-injecting links (see
docs/link-profiles.md); `ferry sim fleet ...` runs many virtual boards behind
one link (see docs/fleet.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: ferry sim link {serve,set,schedule,reset,stats,profiles} ...
       ferry sim fleet --devices N --gateway HOST:PORT [--profile P] [--duration S] ..."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["link"]:
        from ferry.hwsim.link import main as link_main

        return link_main(argv[1:])
    if argv[:1] == ["fleet"]:
        from ferry.hwsim.fleet import main as fleet_main

        return fleet_main(argv[1:])
    print(USAGE, file=sys.stderr if argv[:1] not in (["-h"], ["--help"]) else sys.stdout)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2
