"""Single-feature logistic probes: the fit against scipy, separable and useless features, task building."""

import numpy as np
import pytest
import scipy.optimize
import torch

from hfsae.activations import FIRST_POSITION_USED, capture
from hfsae.evaluation.probes import (
    ProbeTask,
    builtin_probe_tasks,
    evaluate_probes,
    fit_dense_probes,
    fit_probes,
    sparse_examples,
    task_examples,
    task_from_dataset,
)


def scipy_logistic_loss(feature: np.ndarray, labels: np.ndarray) -> float:
    """The unregularised maximum-likelihood 1-D logistic regression's mean cross-entropy."""

    def loss(params):
        z = params[0] * feature + params[1]
        return np.mean(np.logaddexp(0, z) - labels * z)

    return scipy.optimize.minimize(loss, x0=np.zeros(2), method="BFGS", options={"gtol": 1e-10}).fun


def test_each_probe_reaches_the_loss_of_a_scipy_logistic_regression_on_its_feature():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 4, generator=generator) * torch.tensor([1.0, 5.0, 0.1, 2.0])
    labels = (features[:, 0] + features[:, 3] / 2 + torch.randn(300, generator=generator) > 0).long()
    fit = fit_dense_probes(features, labels, l2=0.0)
    for j in range(4):
        expected = scipy_logistic_loss(features[:, j].double().numpy(), labels.double().numpy())
        assert fit.loss[j].item() == pytest.approx(expected, abs=1e-5)
        # The returned weight and bias are on the feature's own scale: they reproduce the loss.
        z = fit.weight[j].double() * features[:, j].double() + fit.bias[j].double()
        recomputed = torch.nn.functional.binary_cross_entropy_with_logits(z, labels.double()).item()
        assert recomputed == pytest.approx(expected, abs=1e-4)


def test_a_feature_equal_to_the_label_gives_a_near_zero_loss_and_a_constant_one_the_label_entropy():
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 0] * 10)
    features = torch.stack([labels.float() * 3.0, torch.ones(80)], dim=1)
    fit = fit_dense_probes(features, labels)
    p = labels.float().mean().item()
    assert fit.loss[0].item() < 0.02
    assert fit.loss[1].item() == pytest.approx(-(p * np.log(p) + (1 - p) * np.log(1 - p)), abs=1e-5)


def test_the_sparse_fit_treats_absent_entries_as_zeros():
    generator = torch.Generator().manual_seed(1)
    dense = torch.relu(torch.randn(200, 6, generator=generator) - 0.8)  # mostly zeros
    labels = (dense[:, 2] + 0.3 * torch.randn(200, generator=generator) > 0.2).long()
    rows, columns = dense.nonzero(as_tuple=True)
    sparse_fit = fit_probes(rows, columns, dense[rows, columns], labels, n_features=6, l2=0.0)
    for j in range(6):
        expected = scipy_logistic_loss(dense[:, j].double().numpy(), labels.double().numpy())
        assert sparse_fit.loss[j].item() == pytest.approx(expected, abs=1e-5)


def test_per_sequence_examples_average_the_code_over_each_context_s_labelled_tokens_after_the_first():
    labels = torch.tensor([[1, 1, 1, -1], [0, 0, 0, 0]])
    task = ProbeTask("t", torch.zeros(2, 4, dtype=torch.long), labels, per_sequence=True)
    pool, labels = task_examples(task)
    assert FIRST_POSITION_USED == 1 and labels.tolist() == [1, 0]
    # Tokens 0..7 in row-major order; token t has latent t % 2 active with value t + 1. Tokens 0 and
    # 4 are first positions, left out; token 3 is ignored.
    indices = torch.tensor([[0], [1], [0], [1], [0], [1], [0], [1]])
    values = torch.arange(1.0, 9.0)[:, None]
    rows, columns, entries = sparse_examples(pool, indices, values, n_latents=2)
    dense = torch.zeros(2, 2, dtype=torch.float64)
    dense[rows, columns] = entries
    expected = torch.tensor([[3 / 2, 2 / 2], [7 / 3, (6 + 8) / 3]], dtype=torch.float64)
    torch.testing.assert_close(dense, expected)


def test_per_token_examples_skip_ignored_tokens_and_first_positions():
    task = ProbeTask("t", torch.zeros(1, 5, dtype=torch.long), torch.tensor([[0, 1, -1, 0, 1]]))
    pool, labels = task_examples(task)
    assert labels.tolist() == [1, 0, 1]
    assert pool.indices()[1].tolist() == [1, 3, 4]


class CharTokenizer:
    """One token per character (ids are code points); enough to build probe tasks."""

    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def batch_decode(self, rows):
        return ["".join(chr(i) for i in row) for row in rows]


def test_builtin_tasks_label_genre_keywords_parentheses_newlines_and_capitals():
    source = "def f(x):\n    return x\n" * 3
    prose = "The Quick fox (jumps)\nover Dogs.\n" * 3
    tasks = {
        task.name: task for task in builtin_probe_tasks(CharTokenizer(), [source, prose], n_contexts=2, context_size=20)
    }
    assert set(tasks) == {
        "python_source",
        "python_keyword",
        "inside_parentheses",
        "next_token_newline",
        "capitalised_word",
    }
    source_row = 0 if tasks["python_source"].labels[0, 0] == 1 else 1
    assert tasks["python_source"].per_sequence
    text = "".join(chr(i) for i in tasks["python_source"].input_ids[source_row].tolist())
    parens = tasks["inside_parentheses"].labels[source_row].tolist()
    expected_parens, depth = [], 0
    for c in text:
        expected_parens.append(int(depth > 0))
        depth = max(0, depth + (c == "(") - (c == ")"))
    assert parens == expected_parens
    newline = tasks["next_token_newline"].labels[source_row].tolist()
    assert newline == [int(c == "\n") for c in text[1:]] + [-1]
    # Single characters are never keywords; capitals are labelled only in prose.
    assert set(tasks["python_keyword"].labels[source_row].tolist()) == {0}
    assert set(tasks["capitalised_word"].labels[source_row].tolist()) == {-1}
    prose_text = "".join(chr(i) for i in tasks["python_source"].input_ids[1 - source_row].tolist())
    assert tasks["capitalised_word"].labels[1 - source_row].tolist() == [int(c.isupper()) for c in prose_text]


def test_a_dataset_task_keeps_per_sequence_labels_and_rejects_a_missing_column():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({"text": ["ab", "cde"], "label": [1, 0]})
    task = task_from_dataset(dataset, CharTokenizer(), name="demo")
    assert task.per_sequence
    assert task.labels.tolist() == [[1, 1, -1], [0, 0, 0]]
    with pytest.raises(ValueError, match=r"no column 'target'; its columns are \['text', 'label'\]"):
        task_from_dataset(dataset, CharTokenizer(), name="demo", label_column="target")


def test_a_dataset_task_with_token_labels_of_the_wrong_length_says_so():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({"text": ["abc"], "label": [[1, 0]]})
    with pytest.raises(ValueError, match="2 token labels for 3 tokens"):
        task_from_dataset(dataset, CharTokenizer(), name="demo")


def test_probing_an_sae_finds_the_latent_and_channel_that_best_predict_a_task(tiny_llama, tiny_sae, tokens):
    x = capture(tiny_llama, tokens, ["layers.0.resid_post"])["layers.0.resid_post"].reshape(-1, 16)
    code = tiny_sae.encode(x)
    # "The most common latent fires" is predicted perfectly by that latent; "channel 3 is above its
    # median" by raw channel 3.
    latent = int(code.indices.reshape(-1).mode().values)
    fires = (code.to_dense(40)[:, latent] > 0).long().reshape(tokens.shape)
    channel_labels = (x[:, 3] > x[:, 3].median()).long().reshape(tokens.shape)
    tasks = [ProbeTask("fires", tokens, fires), ProbeTask("channel", tokens, channel_labels)]
    fires_result, channel_result = evaluate_probes(tiny_sae, tiny_llama, tasks, hook_point="layers.0.resid_post")
    assert fires_result.latent == latent and fires_result.loss < 0.05
    assert channel_result.channel == 3 and channel_result.baseline_loss < 0.05
    assert fires_result.n_examples == tokens.shape[0] * (tokens.shape[1] - FIRST_POSITION_USED)
