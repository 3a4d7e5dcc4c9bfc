"""The metrics logger keeps writing metrics.jsonl when wandb dies under it (e.g. a SIGTERM reached wandb first)."""

import json

from train.metrics.logger import MetricsLogger


class DeadRun:
    def log(self, *a, **k):
        raise ConnectionResetError("wandb service gone")

    def finish(self):
        raise ConnectionResetError("wandb service gone")


def test_wandb_failure_is_survived(tmp_path, caplog):
    logger = MetricsLogger(tmp_path, True, "disabled", "p", None, "r", {}, None, 10, progress=False)
    logger.wandb_run = DeadRun()
    row = {"loss": 1.0, "lr": 0.1, "grad_norm": 1.0, "tokens_per_s": 5.0}
    logger.log(1, row)
    logger.log(2, row)
    logger.close()
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sum("wandb log failed" in r.message for r in caplog.records) == 1
