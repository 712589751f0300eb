"""Model families behind one protocol (`base.Backbone`), one adapter module per family.

A model folder's family is read from its `model_index.json` (`_class_name`, the diffusers pipeline it was saved
with) in one table, `PIPELINE_FAMILIES`; a folder without one is told by its components. Each family module
gives `COMPONENTS`, `METHOD_DEFAULTS`, `check_folder`, `check_configs`, `native_defaults(path)` and
`load(path, ...)`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..errors import ModelError
from . import unet3d, wan
from .base import Backbone, BackboneBase, ModelDefaults, read_json

FAMILY_MODULES: dict[str, ModuleType] = {"unet3d": unet3d, "wan": wan}
# model_index.json `_class_name` -> family
PIPELINE_FAMILIES = {"TextToVideoSDPipeline": "unet3d", "VideoToVideoSDPipeline": "unet3d", "WanPipeline": "wan"}
# components that tell a folder's family when it has no model_index.json
MARKERS = {"unet": "unet3d", "transformer": "wan"}
DEFAULT_FAMILY = "unet3d"


def family_of(path: Path) -> str:
    """The family of the model folder `path`: its model_index.json's pipeline (`PIPELINE_FAMILIES`), else its
    components (`MARKERS`), else `DEFAULT_FAMILY` (whose folder check then names what is missing)."""
    index = path / "model_index.json"
    name = read_json(index).get("_class_name") if index.is_file() else None
    name = name if isinstance(name, str) else None if name is None else repr(name)
    if name in PIPELINE_FAMILIES:
        return PIPELINE_FAMILIES[name]
    if name is not None and any((path / c).is_dir() for c in MARKERS):
        raise ModelError(f"{path} holds a {str(name)[:60]} model, which this package does not run; supported "
                         f"pipelines: {', '.join(sorted(PIPELINE_FAMILIES))}")
    return next((family for component, family in MARKERS.items() if (path / component).is_dir()), DEFAULT_FAMILY)


def family_module(path: Path) -> ModuleType:
    return FAMILY_MODULES[family_of(path)]


def all_components() -> tuple[str, ...]:
    """Every family's component folders (what a hub download fetches)."""
    return tuple(dict.fromkeys(c for m in FAMILY_MODULES.values() for c in m.COMPONENTS))


__all__ = ["Backbone", "BackboneBase", "ModelDefaults", "family_of", "family_module", "all_components",
           "FAMILY_MODULES", "PIPELINE_FAMILIES"]
