"""The deployments' pull step: run the flow from a clone of this project on the worker's machine.

`prefect deploy` would otherwise record the deploying machine's absolute path. This step resolves the
folder at run time instead: `$ODBENCH_PROJECT_DIR` when the worker sets it, else the clone that the
worker's Python environment imports this package from (the one `make install` set up).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR_ENV = "ODBENCH_PROJECT_DIR"


def set_project_directory(directory: str | None = None) -> dict[str, str]:
    """Pull step: change into the project folder and return it (as `directory`, for later steps)."""
    chosen = Path(directory or os.environ.get(PROJECT_DIR_ENV) or Path(__file__).resolve().parents[1])
    if not (chosen / "flows" / "detect.py").is_file():
        raise FileNotFoundError(f"{chosen} is not a clone of the odbench project (no flows/detect.py): set "
                                f"{PROJECT_DIR_ENV} to one, or start the worker from that clone's environment")
    os.chdir(chosen)
    return {"directory": str(chosen)}
