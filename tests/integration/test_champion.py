"""Champion/challenger on the shared local Ray: two real classifier pipeline runs into one store, the second
deliberately worse (a learning rate that cannot learn in one epoch). The version serving traffic is scored
again on the second run's own test rows; the worse run is published as candidates and the alias stays."""

import pytest

from maas.exceptions import RegistryError
from maas.pipelines.classifier import run as run_pipeline
from maas.registry import Registry
from maas.spec import spec_from_dict

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]  # two pipeline runs: ~45 s


def _spec(store: str, data: str, **train) -> object:
    return spec_from_dict({
        "store": store,
        "data": {"path": data, "label": "target", "normalize": "standard",
                 "split": {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0}},
        "model": {"name": "digits", "arch": "mlp", "hidden_sizes": [32], "dropout": 0.0},
        "train": {"num_workers": 1, "epochs": 4, "batch_size": 64, "learning_rate": 0.01, **train},
        "compress": {"latency_runs": 20, "select": "smallest"},
    })


def test_a_worse_retraining_is_a_candidate_the_alias_stays_and_only_a_forced_move_with_a_reason_takes_it(
        digits_parquet, tmp_path):
    store = str(tmp_path / "store")
    reg = Registry(store)
    good = run_pipeline(_spec(store, digits_parquet), serve=False)
    assert good.champion is None  # the first version of a model has nothing to beat
    assert all(v["status"] == "ready" for v in good.variants if v["passed"])
    champion = reg.resolve("digits@production")
    assert champion.ref == good.promoted_ref and champion.metrics["test_accuracy"] > 0.85

    bad = run_pipeline(_spec(store, digits_parquet, epochs=1, learning_rate=1e-7), serve=False)
    scored = bad.champion
    assert scored["ref"] == champion.ref and scored["comparable"]
    # scored again with its own artifact on this run's rows: the same seeded split, so its stored figure
    assert scored["test_accuracy"] == pytest.approx(champion.metrics["test_accuracy"], abs=1e-9)
    fp32 = bad.variants[0]
    assert fp32["metrics"]["test_accuracy"] < 0.5 and fp32["status"] == "candidate" and fp32["passed"]
    assert all(v["status"] in ("candidate", "rejected") for v in bad.variants)
    assert bad.promoted_ref == champion.ref and reg.aliases("digits")["production"] == champion.version
    stored = reg.get_version("digits", int(fp32["ref"].split("/")[1]))
    assert stored.status == "candidate" and f"below champion {champion.ref}'s" in stored.description
    assert stored.lineage["champion"]["held"] is False
    assert "stays at" in bad_summary(bad) and "candidates" in bad_summary(bad)

    with pytest.raises(RegistryError, match="is a candidate.*--force --reason"):
        reg.set_alias("digits", "production", stored.version, by="test")
    reg.set_alias("digits", "production", stored.version, by="test", force=True, reason="a rehearsal of a rollback")
    assert reg.alias_history("digits")[-1]["reason"] == "a rehearsal of a rollback"
    assert reg.resolve("digits@production").version == stored.version


def bad_summary(result) -> str:
    from maas.report import pipeline_summary

    return pipeline_summary(result)
