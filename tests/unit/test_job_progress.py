"""What `maas submit` / `maas logs --follow` and notebooks read from a job's log: typed progress events, parsed
by the module that writes them (maas.progress); the real train loop's lines are parsed in the jobs e2e test."""

from maas.progress import Epoch, line, parse
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


def test_what_the_train_loop_writes_is_what_the_reader_gets_back():
    for epoch in (Epoch(1, 4, 25, 3.80884), Epoch(3, 40, 60, 0.51234, 0.91), Epoch(7, 40, 140, 0.2, 0.95, True)):
        event = parse(f"(RayTrainWorker pid=7, ip=10.0.0.2) {epoch.line()}")
        assert event["stage"] == "train" and event["detail"] == epoch.line()[len("[train] "):]
        assert (event["epoch"], event["epochs"], event["step"]) == (epoch.epoch, epoch.epochs, epoch.step)
        assert event["loss"] == round(epoch.loss, 4) and event.get("val_accuracy") == epoch.val_accuracy
        assert event.get("early_stop", False) == epoch.early_stop
    assert parse(line("compress", "int8_dynamic -> digits/2")) == {"stage": "compress",
                                                                    "detail": "int8_dynamic -> digits/2"}
