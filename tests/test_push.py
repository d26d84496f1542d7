"""Select and push: the best candidate by the selection metric, the champion gate, the run summary.

The gate holds the min delta and per-class recall floors against the served version's metadata."""

from __future__ import annotations

import copy
import json

import pytest

from medkfp.components.evaluate.logic import evaluate
from medkfp.components.push.logic import (
    champion_gate,
    check_min_recall,
    push,
    select_best,
)
from medkfp.model_repository import ModelRepository

SUMMARY_KEYS = {"dataset", "counts", "candidates", "selected", "selection_metric", "pushed", "push_reason"}
CANDIDATE_KEYS = {"name", "architecture", "balancing", "metrics", "model_uri"}


def champion_decision(
    challenger: dict, champion: dict | None, metric: str, min_delta: float, min_recall=None
):
    """(push?, reason) of the champion gate for a challenger against the served champion's metadata."""
    gate = champion_gate(challenger, champion, metric, min_delta, min_recall)
    return gate["push"], gate["reason"]


def evaluation(name: str, macro_f1: float, balanced_accuracy: float = 0.5, **metrics) -> dict:
    return {
        "candidate": {"name": name},
        "metrics": {"macro_f1": macro_f1, "balanced_accuracy": balanced_accuracy, **metrics},
    }


def with_recall(recalls: dict[str, float], macro_f1: float = 0.9) -> dict:
    per_class = {name: {"recall": r} for name, r in recalls.items()}
    return evaluation("x", macro_f1, per_class=per_class)


def assert_pushed(summary: dict, version: int) -> None:
    assert summary["pushed"] is not None and summary["pushed"]["version"] == version, summary["push_reason"]


def assert_not_pushed(summary: dict, reason_start: str) -> None:
    assert summary["pushed"] is None
    assert summary["push_reason"].startswith(reason_start), summary["push_reason"]


@pytest.fixture(scope="module")
def scored(trained_shapes, tmp_path_factory):
    _, _, dataset, model = trained_shapes
    return evaluate(dataset, model)


# --- selection ---------------------------------------------------------------------------------


def test_select_best_by_macro_f1_then_balanced_accuracy():
    evaluations = [evaluation("a", 0.8, 0.9), evaluation("b", 0.9, 0.1), evaluation("c", 0.9, 0.2)]
    assert select_best(evaluations)["candidate"]["name"] == "c"


def test_select_best_by_another_metric_and_refuse_unknown_ones():
    evaluations = [evaluation("a", 0.8, 0.9, accuracy=0.7), evaluation("b", 0.9, 0.1, accuracy=0.95)]
    assert select_best(evaluations, "balanced_accuracy")["candidate"]["name"] == "a"
    assert select_best(evaluations, "accuracy")["candidate"]["name"] == "b"
    with pytest.raises(ValueError, match="unknown selection metric 'loss': use one of macro_f1"):
        select_best(evaluations, "loss")
    with pytest.raises(ValueError, match="no candidate was evaluated"):
        select_best([], "macro_f1")


# --- the champion gate -------------------------------------------------------------------------


def test_champion_gate():
    champion = {"version": 3, "metrics": {"macro_f1": 0.90}}
    assert champion_decision(evaluation("x", 0.5), None, "macro_f1", 0.005) == (True, "no champion yet")
    pushed, reason = champion_decision(evaluation("x", 0.904), champion, "macro_f1", 0.005)
    assert not pushed and "not better than champion v3" in reason
    pushed, reason = champion_decision(evaluation("x", 0.91), champion, "macro_f1", 0.005)
    assert pushed and "better than champion v3" in reason


def test_gate_record_has_both_scores_and_the_delta():
    champion = {"version": 2, "metrics": {"macro_f1": 0.9}}
    gate = champion_gate(evaluation("x", 0.93), champion, "macro_f1", 0.01)
    assert gate["push"] is True
    assert (gate["metric"], gate["challenger"], gate["champion"]) == ("macro_f1", 0.93, 0.9)
    assert gate["delta"] == pytest.approx(0.03) and gate["min_delta"] == 0.01


def test_recall_floors_block_a_challenger_even_without_a_champion():
    challenger = with_recall({"COVID": 0.93, "Normal": 0.99})
    gate = champion_gate(challenger, None, "macro_f1", 0.005, {"COVID": 0.95, "Normal": 0.9})
    assert gate["push"] is False
    assert gate["reason"] == "below the recall floor: COVID 0.9300 < 0.95"
    assert gate["min_recall"]["Normal"] == {"floor": 0.9, "recall": 0.99, "met": True}
    passed = champion_gate(challenger, None, "macro_f1", 0.005, {"COVID": 0.9})
    assert (passed["push"], passed["reason"]) == (True, "no champion yet")


def test_a_champion_without_the_selection_metric_is_not_replaced_blindly():
    champion = {"version": 1, "metrics": {"macro_f1": 0.5}}
    challenger = evaluation("x", 0.9, macro_roc_auc=0.99)
    pushed, reason = champion_decision(challenger, champion, "macro_roc_auc", 0.0)
    assert not pushed and reason.startswith("champion v1 records no macro_roc_auc")


def test_recall_floors_must_name_known_classes_and_lie_in_0_1():
    assert check_min_recall({"COVID": "0.95"}, ["COVID", "Normal"]) == {"COVID": 0.95}
    with pytest.raises(ValueError, match="class 'COVI', which is not one of COVID, Normal"):
        check_min_recall({"COVI": 0.9}, ["COVID", "Normal"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_min_recall({"COVID": 95}, ["COVID", "Normal"])


# --- push ----------------------------------------------------------------------------------------


def test_push_publishes_then_refuses_an_equal_model(trained_shapes, scored, tmp_path):
    store, ingested, dataset, _ = trained_shapes
    first = push([scored], ingested, dataset, store.uri, comparison_path=tmp_path / "table.html")
    assert first["pushed"]["version"] == 1 and first["push_reason"] == "no champion yet"
    assert first["pushed"]["model_name"] == "shapes"
    assert first["counts"]["train"] + first["counts"]["val"] + first["counts"]["test"] == 90
    repository = ModelRepository(store)
    assert repository.stable_version("shapes") == 1
    metadata = repository.metadata("shapes", 1)
    assert metadata["class_names"] == ["circles", "plain", "stripes"]
    assert metadata["files"] and "saved_model.pb" in metadata["files"]
    assert store.exists("models/shapes/1/MODEL_CARD.md")
    second = push([scored], ingested, dataset, store.uri)
    assert second["pushed"] is None
    assert second["push_reason"].startswith("not better than champion v1")
    assert repository.complete_versions("shapes") == [1]
    json.dumps(second)  # the summary is plain JSON

    # the summary: DESIGN.md's schema, plus the champion comparison
    assert SUMMARY_KEYS <= set(second) and CANDIDATE_KEYS <= set(second["candidates"][0])
    assert second["champion"]["version"] == 1
    assert second["champion"]["metrics"]["macro_f1"] == scored["metrics"]["macro_f1"]
    assert second["gate"]["delta"] == 0.0 and second["gate"]["push"] is False
    # the version records how and where it was trained, and why it was pushed
    assert metadata["devices"] == scored["devices"] and metadata["accelerator"]["strategy"]
    assert metadata["candidate"]["optimizer"] == "adam" and metadata["history"]["loss"]
    assert metadata["gate"]["reason"] == "no champion yet" and metadata["selection_metric"] == "macro_f1"
    card = store.get_text("models/shapes/1/MODEL_CARD.md")
    assert "Pushed because: no champion yet" in card and "Trained on:" in card
    table = (tmp_path / "table.html").read_text()
    assert "simple-cnn-none" in table and "Pushed shapes v1" in table and "recall circles" in table


def test_push_holds_back_a_model_below_a_recall_floor(trained_shapes, scored, tmp_path):
    store, ingested, dataset, _ = trained_shapes
    weak = copy.deepcopy(scored)
    weak["metrics"]["per_class"]["plain"]["recall"] = 0.5
    summary = push(
        [weak],
        ingested,
        dataset,
        store.uri,
        model_name="shapes-floor",
        min_recall={"plain": 0.9},
        comparison_path=tmp_path / "table.html",
    )
    assert_not_pushed(summary, "below the recall floor: plain 0.5000 < 0.9")
    assert ModelRepository(store).complete_versions("shapes-floor") == []
    assert "Nothing pushed" in (tmp_path / "table.html").read_text()
    ok = push([scored], ingested, dataset, store.uri, model_name="shapes-floor", min_recall={"plain": 0.0})
    assert_pushed(ok, 1)


def test_push_selects_by_the_given_metric(trained_shapes, scored):
    store, ingested, dataset, _ = trained_shapes
    better_balanced = copy.deepcopy(scored)
    better_balanced["candidate"] = {
        **scored["candidate"],
        "name": "simple-cnn-oversample",
        "balancing": "oversample",
    }
    better_balanced["metrics"]["macro_f1"] -= 0.1
    better_balanced["metrics"]["balanced_accuracy"] += 0.1
    summary = push(
        [scored, better_balanced],
        ingested,
        dataset,
        store.uri,
        model_name="shapes-metric",
        metric="balanced_accuracy",
    )
    assert summary["selected"] == "simple-cnn-oversample"
    assert summary["selection_metric"] == "balanced_accuracy"
    assert_pushed(summary, 1)
    with pytest.raises(ValueError, match="--min-recall names class 'squares'"):
        push([scored], ingested, dataset, store.uri, min_recall={"squares": 0.5})
