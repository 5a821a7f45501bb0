"""``python -m bench.launch OUT CMD...``: run CMD, write its peak RSS to OUT, exit with its exit code.

Linux gives an exec'd child the peak RSS of the process it was forked from as a starting value of its own
``ru_maxrss``. The bench's process grows (it builds models, holds results), so its children are started from this
small process instead: the peak read here with ``wait4`` is the child's own (and that of the children it waited for,
such as accelerate's ranks).
"""

import json
import os
import sys


def main() -> int:
    out, cmd = sys.argv[1], sys.argv[2:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as error:
            print(f"bench.launch: cannot run {cmd[0]}: {error}", file=sys.stderr, flush=True)
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(out, "w") as fh:
        json.dump({"ru_maxrss_kb": usage.ru_maxrss}, fh)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
