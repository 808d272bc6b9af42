"""What `maas submit` / `maas logs --follow` and notebooks read from a job's log: typed progress events."""

from maas.submit import progress_event


def test_progress_lines_become_events_and_everything_else_is_left_out():
    worker = "\x1b[36m(RayTrainWorker pid=4411, ip=10.0.0.2)\x1b[0m [train] epoch 3/40 (7%) step 60 " \
             "loss=0.5123 val_accuracy=0.9100"
    assert progress_event(worker) == {"stage": "train", "detail": "epoch 3/40 (7%) step 60 loss=0.5123 "
                                      "val_accuracy=0.9100", "epoch": 3, "epochs": 40, "step": 60,
                                      "loss": 0.5123, "val_accuracy": 0.91}
    lm = progress_event("(RayTrainWorker pid=7) [train] epoch 1/4 (25%) step 25 loss=3.8088")
    assert lm["epoch"] == 1 and lm["loss"] == 3.8088 and "val_accuracy" not in lm
    assert progress_event("[data] reading data/digits.parquet") == {"stage": "data",
                                                                     "detail": "reading data/digits.parquet"}
    assert progress_event("[train] 2 worker(s) (ddp) on 1 node(s)") == {"stage": "train",
                                                                        "detail": "2 worker(s) (ddp) on 1 node(s)"}
    for other in ('{"maas_result": "pipeline", "status": "succeeded"}',
                  "2026-11-26 14:39:17,778\tINFO streaming_executor.py:215 -- Starting execution",
                  "(autoscaler +2s) Tip: use `ray status`", "", "[not progress", "Traceback (most recent call last):"):
        assert progress_event(other) is None
