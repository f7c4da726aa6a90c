"""ModelOpt's wheels slim enough to travel beside the project's .whl in one device call (64 MiB in all):
nvidia-modelopt as is, and pulp (its LP solver) repacked with only the x86_64 Linux CBC binary (16 MB of
solvers for other platforms dropped; ModelOpt calls pulp.PULP_CBC_CMD, which picks linux/i64 there).

    python -m benchmarks.peer_wheels .whl_peers .whl_sens     # then carry [".whl", ".whl_sens"]
    # on the GPU machine:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl .whl_sens/*.whl
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

KEEP_SOLVER = "pulp/solverdir/cbc/linux/i64/"


def slim_pulp(src: Path, dst: Path) -> None:
    def dropped(name: str) -> bool:
        return name.startswith("pulp/solverdir/cbc/") and not name.startswith(KEEP_SOLVER)

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for item in zin.infolist():
            if dropped(item.filename):
                continue
            data = zin.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):  # pip checks listed files only when installing them
                data = "".join(line + "\n" for line in data.decode().splitlines()
                               if not dropped(line.split(",")[0])).encode()
            zout.writestr(item, data)


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    (modelopt,), (pulp,) = sorted(src.glob("nvidia_modelopt-*.whl")), sorted(src.glob("pulp-*.whl"))
    shutil.copy2(modelopt, dst / modelopt.name)
    slim_pulp(pulp, dst / pulp.name)
    print(f"{dst}: " + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(dst.glob("*.whl"))))


if __name__ == "__main__":
    main()
