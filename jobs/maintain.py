"""``lateline maintain``: compact the table, clean up old versions, build or update its indexes."""

from __future__ import annotations

import json
import sys

from jobs.common import config_arguments, fail, job_parser, parse
from pipeline.lock import TableLocked
from pipeline.maintain import NothingToMaintain, maintain
from pipeline.runner import EXIT_CODES


def main(argv: list[str] | None = None) -> int:
    p = job_parser("maintain", __doc__)
    config_arguments(p)
    _, config = parse(p, argv)
    if isinstance(config, int):
        return config
    try:
        report = maintain(config)
    except NothingToMaintain as exc:
        return fail(str(exc), "config")
    except TableLocked as exc:
        return fail(str(exc), "locked")
    print(json.dumps(report, indent=2))
    return EXIT_CODES["ok"]


if __name__ == "__main__":
    sys.exit(main())
