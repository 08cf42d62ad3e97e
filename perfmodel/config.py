"""The Hydra configs of every command: where they live (``conf/``, or ``$PERFMODEL_CONF``) and ``compose``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def conf_dir() -> Path:
    """The config folder: ``$PERFMODEL_CONF`` when set, else the repository's ``conf/``."""
    return Path(os.environ.get("PERFMODEL_CONF") or REPO / "conf").resolve()


def compose(name: str, overrides: Sequence[str] = ()) -> Any:
    """The Hydra config ``<conf_dir()>/<name>.yaml`` with command-line ``overrides`` applied.

    Args:
        name: config name (``train``, ``collect``, ``tune``...).
        overrides: Hydra overrides, e.g. ``["model=sage", "trainer.max_epochs=3"]``.

    Returns:
        The composed ``DictConfig``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides))
