"""Ray job entrypoints, one per stage and one for the whole pipeline: `python -m jobs.<stage> --spec FILE`.

They run unchanged under `ray job submit --working-dir .` on a cluster where maas is not installed: when
`maas` cannot be imported, the repository's `platform/` folder (shipped in the working dir) is used.
"""

import sys
from pathlib import Path

SHIPPED_SOURCE = None  # the maas source folder when maas is not installed where the job runs

try:
    import maas  # noqa: F401
except ImportError:  # shipped as source in the job's working_dir
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    import maas  # noqa: F401

    SHIPPED_SOURCE = str(Path(maas.__file__).resolve().parent)
