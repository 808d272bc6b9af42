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
    answers, rejects = answer(df, lambda texts: np.ones((len(texts), 3), np.float32) * len(texts), signature,
                              "embed", "doc", "enc/1")
    assert answers["doc"].tolist() == ["a"] and np.stack(answers["embedding"]).shape == (1, 3)
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
