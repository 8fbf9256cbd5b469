"""Evaluate generated clips against ground truth.

    python -m experiments.evaluate generated=DIR target=DIR [metrics=everanimate] [out=DIR] [logger=none]

Composes conf/evaluate.yaml (metrics from the conf/metrics group, logger from conf/logger), runs
:func:`metrics.evaluation.run_evaluation`, which leaves per_clip.csv, summary.csv and summary.json
in ``out``, and logs the results. docs/METRICS.md lists the metrics, presets and weight files.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.training import build_logger
from metrics.evaluation import log_report, run_evaluation


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the evaluation into Hydra's run directory (``out``) and log it."""
    rows, summary = run_evaluation(cfg, Path(HydraConfig.get().runtime.output_dir))
    logger = build_logger(cfg)
    if logger:
        log_report(logger, rows, summary)


if __name__ == "__main__":
    main()
