"""Text sources (built-in, local files, Hub) and packing into token contexts."""

import json

import pytest

from hfsae.activations.text import (
    DatasetUnavailableError,
    TextColumnError,
    TextPosition,
    TextSource,
    token_contexts,
)

DOCUMENTS = [f"Document {i}: " + "word " * (3 + 7 * i) for i in range(30)]


@pytest.fixture
def jsonl_corpus(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": doc, "id": i}) + "\n" for i, doc in enumerate(DOCUMENTS)))
    return path


def test_local_jsonl_documents_come_back_in_order_without_shuffling(jsonl_corpus):
    text = TextSource(str(jsonl_corpus), text_column="body", split="all", shuffle_seed=None)
    assert [doc for _, doc in text.documents()] == DOCUMENTS


@pytest.mark.parametrize("suffix", ["txt", "csv", "parquet"])
def test_other_local_file_types_are_read(tmp_path, suffix):
    import datasets

    path = tmp_path / f"docs.{suffix}"
    if suffix == "txt":
        path.write_text("\n".join(DOCUMENTS[:5]) + "\n")
    else:
        table = datasets.Dataset.from_dict({"text": DOCUMENTS[:5]})
        table.to_csv(path) if suffix == "csv" else table.to_parquet(path)
    text = TextSource(str(path), split="all", shuffle_seed=None)
    assert [doc.strip() for _, doc in text.documents()] == [doc.strip() for doc in DOCUMENTS[:5]]


def test_a_folder_of_files_and_streaming_give_the_same_documents(tmp_path, jsonl_corpus):
    stored = TextSource(str(jsonl_corpus.parent), text_column="body", split="all", shuffle_seed=None)
    streamed = TextSource(str(jsonl_corpus), text_column="body", split="all", shuffle_seed=None, streaming=True)
    assert list(stored.documents()) == list(streamed.documents())


def test_shuffling_is_a_seeded_permutation_of_the_documents(jsonl_corpus):
    shuffled = [
        doc for _, doc in TextSource(str(jsonl_corpus), text_column="body", split="all", shuffle_seed=3).documents()
    ]
    again = [
        doc for _, doc in TextSource(str(jsonl_corpus), text_column="body", split="all", shuffle_seed=3).documents()
    ]
    assert shuffled == again and shuffled != DOCUMENTS and sorted(shuffled) == sorted(DOCUMENTS)


def test_train_and_test_splits_partition_the_documents(jsonl_corpus):
    def split(name):
        return {
            doc
            for _, doc in TextSource(str(jsonl_corpus), text_column="body", split=name, test_fraction=0.3).documents()
        }

    train, test = split("train"), split("test")
    assert train.isdisjoint(test)
    assert train | test == set(DOCUMENTS)


def test_the_test_split_holds_about_the_requested_fraction_of_documents(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"line number {i}\n" for i in range(2000)))
    test = list(TextSource(str(path), split="test", test_fraction=0.25).documents())
    assert 0.22 < len(test) / 2000 < 0.28  # binomial sd ≈ 0.01


def test_a_missing_text_column_names_the_columns_present(jsonl_corpus):
    with pytest.raises(TextColumnError, match=r"no column 'text'; its columns are \['body', 'id'\]"):
        list(TextSource(str(jsonl_corpus)).documents())


def test_a_missing_text_column_is_reported_when_streaming_too(jsonl_corpus):
    with pytest.raises(TextColumnError, match=r"no column 'content'.*'body'"):
        list(TextSource(str(jsonl_corpus), text_column="content", streaming=True).documents())


def test_a_hub_dataset_while_offline_gets_a_clear_error_not_a_hang():
    with pytest.raises(DatasetUnavailableError, match=r"HF_HUB_OFFLINE=1 and it is not in the local cache"):
        list(TextSource("someone/some-dataset-that-is-not-cached").documents())


def test_a_missing_local_file_says_what_is_accepted(tmp_path):
    with pytest.raises(DatasetUnavailableError, match=r"No such file or folder: .*nothing\.jsonl"):
        list(TextSource(str(tmp_path / "nothing.jsonl")).documents())


def test_an_unknown_split_is_rejected():
    with pytest.raises(ValueError, match=r"split must be 'train', 'test' or 'all'; got 'validation'"):
        TextSource(split="validation")


def test_contexts_pack_documents_separated_by_end_of_text(jsonl_corpus, tiny_tokenizer):
    text = TextSource(str(jsonl_corpus), text_column="body", split="all", shuffle_seed=None)
    contexts = [ids for _, ids in token_contexts(text, tiny_tokenizer, context_size=16)]
    stream = []
    for doc in DOCUMENTS:
        stream += tiny_tokenizer(doc, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert all(len(ids) == 16 for ids in contexts)
    assert len(contexts) == len(stream) // 16
    assert [token for ids in contexts for token in ids] == stream[: 16 * len(contexts)]


def test_a_context_position_names_its_first_token(jsonl_corpus, tiny_tokenizer):
    text = TextSource(str(jsonl_corpus), text_column="body", split="all", shuffle_seed=None)
    for position, ids in token_contexts(text, tiny_tokenizer, context_size=16):
        doc = tiny_tokenizer(DOCUMENTS[position.document], add_special_tokens=False)["input_ids"]
        assert ids[0] == (doc + [tiny_tokenizer.eos_token_id])[position.token]


def test_restarting_from_a_position_yields_the_same_contexts(jsonl_corpus, tiny_tokenizer):
    text = TextSource(str(jsonl_corpus), text_column="body", split="train", test_fraction=0.2)
    contexts = list(token_contexts(text, tiny_tokenizer, context_size=16))
    for k in [1, 7, len(contexts) // 2, len(contexts) - 1]:
        restarted = list(token_contexts(text, tiny_tokenizer, context_size=16, start=contexts[k][0]))
        assert restarted == contexts[k:]


def test_the_builtin_corpus_has_pydoc_topics_and_stdlib_sources():
    documents = [doc for _, doc in TextSource("builtin", split="all", shuffle_seed=None).documents()]
    assert len(documents) > 500
    assert any("def " in doc for doc in documents) and any("statement" in doc for doc in documents)
    assert TextPosition(1, 0) > TextPosition(0, 5)
