"""``ray start`` for a second node on 127.0.0.1 (the arguments are ``ray start``'s).

Measured with Ray 2.60: ``ray start --address=...`` (a non-head node) aborts with "Multi-node
Ray clusters are not supported on Windows and OSX" when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
and without that variable it replaces 127.0.0.1 (node address and GCS address) by the
machine's routable address, so a loopback-only head cannot be joined. Here the CLI runs with
both of those decisions overridden: the node joins the head at 127.0.0.1 and keeps 127.0.0.1;
its raylet and workers still inherit RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (loopback listeners).
"""

import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as services

ray_constants.ENABLE_RAY_CLUSTER = True  # lets a non-head node start
services.resolve_ip_for_localhost = lambda host: host  # keeps 127.0.0.1

from ray.scripts.scripts import main  # noqa: E402

if __name__ == "__main__":
    sys.argv = ["ray", *sys.argv[1:]]
    sys.exit(main())
