"""`motiontransfer train`: the one training entry point of the shapes models, whichever family a work folder
holds (`training.TrainConfig.family`): the UNet family's stages are in `training`, the Wan family's in
`training_wan` (which builds on `training`'s loops). Kept apart from both so that neither imports the other
back.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import ConfigError
from . import training_wan
from .training import (DEFAULT_EXPORT, DEFAULT_WORK, Log, TrainConfig, build_tokenizer, export, seed_from_export,
                       stage_data, stage_encode, stage_unet, stage_vae, train_config)


def train(work: str | Path = DEFAULT_WORK, *, export_to: str | Path | None = None, export_only: bool = False,
          init_from: str | Path | None = None, overrides: dict[str, str] | None = None,
          device: str = "cpu") -> TrainConfig:
    """Runs every stage not yet done in `work` (resuming the one it was in), then exports to `export_to` if given.

    `export_only` exports the last checkpoint (to `export_to`, default `DEFAULT_EXPORT`) and trains nothing;
    `init_from` starts an empty work folder from an exported model (`seed_from_export`); `overrides` as in
    `train_config`; `device` cpu, cuda or cuda:N (checkpoints move between them). The resolved config is written
    to `work/config.json`. Returns it.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = train_config(work, overrides)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)
    if cfg.family == "wan":
        if init_from:
            training_wan.seed_from_export(cfg, work, Path(init_from))
        if export_only and not export_to:
            raise ConfigError("--export-only for the Wan family needs --export (it has no shipped folder yet)")
        if not export_only:
            training_wan.run(cfg, work, Log(work / "log.jsonl"), torch.device(device))
        if export_to:
            training_wan.export(cfg, work, Path(export_to))
        return cfg
    if export_only:
        export(cfg, work, Path(export_to or DEFAULT_EXPORT))
        return cfg
    log = Log(work / "log.jsonl")
    if init_from:
        seed_from_export(cfg, work, Path(init_from))
    stage_data(cfg, work)
    if not (work / "tokenizer" / "vocab.json").exists():
        build_tokenizer(work / "tokenizer", cfg.max_tokens)
    device = torch.device(device)
    stage_vae(cfg, work, log, device)
    stage_encode(cfg, work, device)
    stage_unet(cfg, work, log, device)
    if export_to:
        export(cfg, work, Path(export_to))
    return cfg

