"""Batch rows -> answers and rejects (maas.batch.rows): the endpoint's own parsing and outputs, one reason per
bad row, every row in exactly one of the two. No Ray."""

import json

import numpy as np
import pandas as pd
import pytest

from maas.batch.rows import answer, check_columns, input_columns
from maas.exceptions import BatchError
from maas.models import classifier_signature
from maas.serve.protocols.oip.codec import classifier_outputs
from maas.serve.protocols.oip.handlers import parse_object


def _logits(x: np.ndarray) -> np.ndarray:
    """A stand-in predictor: logits that depend on every input column."""
    return np.stack([x.sum(axis=1), -x.sum(axis=1) + x[:, 0] * 2], axis=1).astype(np.float32)


def test_raw_columns_are_encoded_as_the_endpoint_encodes_them_and_a_missing_category_is_a_reject():
    signature = classifier_signature(4, ["lo", "hi"], features=["size", "color=red", "color=blue", "shape"],
                                     raw_features=["size", "color", "shape"],
                                     encoders={"color": {"kind": "one_hot", "categories": ["red", "blue"]},
                                               "shape": {"kind": "ordinal", "categories": ["o", "x"]}})
    df = pd.DataFrame({"id": [10, 11, 12, 13], "size": [1.5, 2.0, None, 0.5],
                       "color": ["red", None, "blue", "green"], "shape": ["x", "o", "o", "o"]})
    answers, rejects = answer(df, _logits, signature, "classify", "id", "m/3")
    assert answers["id"].tolist() == [10, 13] and rejects["id"].tolist() == [11, 12]
    assert rejects["reason"].tolist() == ["column 'color' is empty", "column 'size' is empty"]
    assert json.loads(rejects["row"][0]) == {"size": 2.0, "color": None, "shape": "o"}
    # the endpoint, one tensor per raw column (an unseen category encodes to no column, as at training)
    req = {"inputs": [{"name": "size", "datatype": "FP32", "shape": [2], "data": [1.5, 0.5]},
                      {"name": "color", "datatype": "BYTES", "shape": [2], "data": ["red", "green"]},
                      {"name": "shape", "datatype": "BYTES", "shape": [2], "data": ["x", "o"]}]}
    x, _, _ = parse_object(req, signature, "classify")
    label, probs = classifier_outputs(_logits(x), signature, None)
    assert answers["label"].tolist() == label["data"] and set(answers["version"]) == {"m/3"}
    np.testing.assert_array_equal(np.stack(answers["probabilities"]), np.reshape(probs["data"], probs["shape"]))


def test_texts_that_the_endpoint_would_refuse_are_rejects_and_the_rest_are_embedded():
    signature = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}]}
    df = pd.DataFrame({"doc": ["a", "b", "c", "d"], "text": ["fine words", "   ", None, "x" * 100_001]})
    class Words:  # an encoder's tokenizer as the predictor holds it: words plus [CLS] and [SEP]
        def count_tokens(self, texts):
            return sum(len(t.split()) + 2 for t in texts)

    class Encoder:
        tokenizer = Words()

        def __call__(self, texts):
            return np.ones((len(texts), 3), np.float32) * len(texts)

    answers, rejects = answer(df, Encoder(), signature, "embed", "doc", "enc/1")
    assert answers["doc"].tolist() == ["a"] and np.stack(answers["embedding"]).shape == (1, 3)
    assert answers["tokens"].tolist() == [4]  # the usage /v1/embeddings reports for the text
    assert rejects["reason"].tolist() == ["column 'text' is an empty text", "column 'text' is empty",
                                          "column 'text' holds 100001 characters; at most 100000 per text"]


def test_rows_holding_their_features_as_lists_and_what_a_batch_cannot_read():
    signature = classifier_signature(2, [0, 1])
    df = pd.DataFrame({"id": [1, 2, 3], "input": [[1.0, 2.0], [1.0], [np.inf, 0.0]]})
    answers, rejects = answer(df, _logits, signature, "classify", "id", "m/1")
    assert answers["id"].tolist() == [1] and rejects["id"].tolist() == [2, 3]
    assert set(rejects["reason"]) == {"column 'input' must hold 2 finite numbers per row"}
    assert input_columns(signature, "classify") == ["input"]
    with pytest.raises(BatchError, match="a 'generate' model is not supported yet"):
        input_columns(signature, "generate")
    with pytest.raises(BatchError, match="--id-column: the input has no column 'key'"):
        check_columns(["id", "input"], signature, "classify", "key")
    with pytest.raises(BatchError, match="the model reads column.* input, which the input lacks"):
        check_columns(["id", "x"], signature, "classify", "id")


def test_a_language_models_rows_prompts_or_chats_each_asked_or_rejected_with_its_reason():
    from maas.batch.llm import PROMPT, check_row, prompt_columns

    assert check_row({"prompt": "w1 w2"}) == ("prompt", "w1 w2", None)
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "x"}]
    assert check_row({"prompt": None, "messages": turns})[1:] == ([{"role": "system", "content": "be brief"},
                                                                  {"role": "user", "content": "hi"}], None)
    assert check_row({"messages": json.dumps(turns)})[2] is None  # a chat may arrive as its JSON text
    assert check_row({"prompt": "w1", "messages": float("nan")})[0] == PROMPT  # pandas' empty cell: a completion
    for row, why in [({"prompt": " "}, "non-empty text"), ({"prompt": 3}, "non-empty text"), ({}, "non-empty text"),
                     ({"messages": []}, "non-empty list"), ({"messages": "{not json"}, "not JSON"),
                     ({"messages": [{"role": "robot", "content": "x"}]}, "turn 0 must be"),
                     ({"messages": [{"role": "user", "content": 7}]}, "turn 0 must be")]:
        column, placeholder, reason = check_row(row)
        assert why in reason and placeholder, (row, reason)  # a placeholder still flows through the engine
    assert prompt_columns(["id", "messages", "x"]) == ["messages"]
    with pytest.raises(BatchError, match="'prompt' column .* the input has id, text"):
        prompt_columns(["id", "text"])


def test_a_language_models_sampling_is_greedy_by_default_and_capped_as_the_endpoint_caps_it():
    from maas.batch.llm import sampling
    from maas.spec import DeploySpec

    spec = DeploySpec(llm={"max_tokens": 100}).llm
    assert sampling(None, None, spec) == {"max_tokens": 100, "temperature": 0.0}
    assert sampling(8, 0.7, spec) == {"max_tokens": 8, "temperature": 0.7}
    for tokens, temperature, flag in [(0, None, "--max-tokens"), (101, None, "--max-tokens"), (8, 3.0, "--temp")]:
        with pytest.raises(BatchError, match=flag):
            sampling(tokens, temperature, spec)


def test_the_llm_writer_puts_every_row_in_answers_or_rejects_with_the_engines_own_error(tmp_path):
    from maas.batch.llm import Writer

    na = pd.NA
    block = pd.DataFrame({  # as the engine's stage hands a block over: a failed row skipped the postprocessing
        "maas_id": ["a", "b", "c"], "maas_reject": ["", "column 'prompt' must hold a non-empty text", ""],
        "maas_max_tokens": [2, 2, 2],
        "text": [" w1 w2", " w9", na], "prompt_tokens": [3, 1, na], "completion_tokens": [2, 1, na],
        "__inference_error__": [na, na, "Traceback ...\nVLLMValidationError: long"]})
    counts = Writer(str(tmp_path), "key", "parquet", "lm/2")(block)
    assert counts.to_dict("records") == [{"answered": 1, "rejected": 2, "skipped": 0}]
    answers = pd.read_parquet(tmp_path / "answers")
    assert answers.to_dict("records") == [{"key": "a", "text": " w1 w2", "finish_reason": "length",
                                           "prompt_tokens": 3, "completion_tokens": 2, "version": "lm/2"}]
    rejects = pd.read_parquet(tmp_path / "rejects").set_index("key")["reason"].to_dict()
    assert rejects == {"b": "column 'prompt' must hold a non-empty text",
                       "c": "the engine refused it: VLLMValidationError: long"}


def test_a_rows_own_sampling_overrides_the_batchs_within_the_cap_or_is_its_reject_reason():
    from maas.batch.llm import row_sampling

    base = {"max_tokens": 16, "temperature": 0.0}
    assert row_sampling({"prompt": "x"}, base, 100) == (base, None)
    assert row_sampling({"max_tokens": 5, "temperature": None}, base, 100) == ({"max_tokens": 5, "temperature": 0.0},
                                                                              None)
    assert row_sampling({"max_tokens": 5.0, "temperature": 0.7}, base, 100)[0] == {"max_tokens": 5, "temperature": 0.7}
    assert row_sampling({"max_tokens": float("nan")}, base, 100) == (base, None)  # pandas' empty cell
    for row, field in [({"max_tokens": 101}, "max_tokens"), ({"max_tokens": 2.5}, "max_tokens"),
                       ({"max_tokens": "5"}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
                       ({"temperature": 3}, "temperature"), ({"temperature": -1}, "temperature")]:
        params, why = row_sampling(row, base, 100)
        assert params == base and why.startswith(repr(field)), (row, why)
