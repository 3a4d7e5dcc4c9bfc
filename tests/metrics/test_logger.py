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


class RecordingRun:
    def __init__(self):
        self.logged = []

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        pass


def test_validation_metrics_reach_every_sink(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, True, "disabled", "p", None, "r", {}, None, 10, progress=True)
    logger.wandb_run = RecordingRun()
    row = {"loss": 1.0, "lr": 0.1, "grad_norm": 1.0, "tokens_per_s": 5.0, "steps_this_run": 2, "val/loss": 2.1,
           "val/lm_loss": 2.0, "val/dialogs/loss": 1.9876, "val/image_qa/loss": 2.5012, "val/seconds": 3.14}
    logger.log(2, row)
    logger.close()
    (record,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record.pop("time") > 0  # every record carries its wall-clock time (the ledger's)
    assert record == {"step": 2, **row}
    assert logger.wandb_run.logged == [(2, row)]
    assert "| val 2.1000 (dialogs 1.9876, image_qa 2.5012; 3.1 s)" in capsys.readouterr().err
