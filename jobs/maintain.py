"""``lateline maintain``: compact the table, clean up old versions, build its indexes or add new rows to them
(the vector index is retrained once the table has grown to maintain.ann_retrain_growth times its training rows)."""

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
    p.add_argument(
        "--rebuild-indexes",
        action="store_true",
        help="rebuild the indexes this config maintains and retrain the vector index, whatever they cover (an "
        "index the config no longer builds, e.g. with fts: false, is left as it is)",
    )
    args, config = parse(p, argv)
    if isinstance(config, int):
        return config
    try:
        report = maintain(config, rebuild_indexes=args.rebuild_indexes)
    except NothingToMaintain as exc:
        return fail(str(exc), "config")
    except TableLocked as exc:
        return fail(str(exc), "locked")
    print(json.dumps(report, indent=2))
    return EXIT_CODES["ok"]


if __name__ == "__main__":
    sys.exit(main())
