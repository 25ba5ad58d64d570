"""The one map of data sources: offline corpus, local text and JSON files, Hub datasets."""

import json

import pytest
from datasets import Dataset, DatasetDict

from hf_longssm import sources


@pytest.fixture()
def fake_offline_corpus(monkeypatch):
    """The offline corpus without the package download: two splits of one document each."""
    books = DatasetDict(
        {"train": Dataset.from_dict({"text": ["seen play"]}), "held_out": Dataset.from_dict({"text": ["new play"]})}
    )
    fake = sources.OfflineCorpus(sources.OFFLINE_SHAKESPEARE, lambda: books)
    monkeypatch.setitem(sources.OFFLINE_CORPORA, sources.OFFLINE_SHAKESPEARE, fake)
    return books


@pytest.fixture()
def hub_calls(monkeypatch):
    calls = []
    monkeypatch.setattr("datasets.load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or ["doc"])
    return calls


@pytest.mark.parametrize(
    ("name", "offline"),
    [("hf_longssm/offline-shakespeare", True), ("monology/pile-uncopyrighted", False), (None, False)],
)
def test_is_offline_tells_the_offline_corpus_from_hub_datasets(name, offline):
    assert sources.is_offline(name) is offline


def test_the_offline_shakespeare_corpus_is_built_by_the_corpus_module():
    from hf_longssm.corpus import load_offline_books

    assert sources.OFFLINE_CORPORA["hf_longssm/offline-shakespeare"].build is load_offline_books


def test_the_offline_corpus_gives_the_requested_split(fake_offline_corpus):
    assert sources.load_documents("hf_longssm/offline-shakespeare", split="held_out")["text"] == ["new play"]


def test_the_offline_corpus_refuses_an_unknown_split(fake_offline_corpus):
    with pytest.raises(ValueError, match="has the splits \\['held_out', 'train'\\]; got split='test'"):
        sources.load_documents("hf_longssm/offline-shakespeare", split="test")


def test_evaluation_reads_held_out_offline_and_test_on_the_hub():
    assert sources.get_source("hf_longssm/offline-shakespeare").eval_split == "held_out"
    assert sources.get_source("org/long-texts").eval_split == "test"


def test_txt_files_are_one_document_each(tmp_path):
    paths = []
    for i, text in enumerate(["first play\n", "second play\n"]):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_text(text)
    documents = sources.load_documents(data_files=[str(p) for p in paths])
    assert documents["text"] == ["first play\n", "second play\n"]


def test_jsonl_files_are_one_document_per_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["row one", "row two", "row three"]) + "\n")
    assert sources.load_documents(data_files=[str(path)])["text"] == ["row one", "row two", "row three"]


def test_the_text_format_reads_any_file_as_one_document(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "row one"}\n')
    assert sources.load_documents(data_files=[str(path)], file_format="text")["text"] == ['{"text": "row one"}\n']


def test_data_files_win_over_a_dataset_name(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("local")
    source = sources.get_source("org/long-texts", data_files=[str(path)])
    assert isinstance(source, sources.TextFiles)
    assert source.load()["text"] == ["local"]


def test_a_hub_dataset_is_loaded_with_its_config_split_and_streaming(hub_calls):
    assert sources.load_documents("org/long-texts", split="validation", config="en", streaming=True) == ["doc"]
    assert hub_calls == [(("org/long-texts", "en"), {"split": "validation", "streaming": True})]


def test_no_dataset_and_no_files_is_an_error_naming_the_offline_corpus():
    with pytest.raises(ValueError, match="Give dataset_name .*'hf_longssm/offline-shakespeare'.* or data_files"):
        sources.load_documents()


def test_an_unknown_file_format_is_an_error(tmp_path):
    (tmp_path / "a.csv").write_text("a,b")
    with pytest.raises(ValueError, match="Unknown file_format 'csv'; choose from \\['json', 'text'\\]"):
        sources.get_source(data_files=[str(tmp_path / "a.csv")], file_format="csv")


def test_a_txt_file_keeps_its_bytes_crlf_included(tmp_path):
    """`datasets`' text loader turns CRLF into LF; a byte-level model must see the file's own bytes."""
    raw = b"line one\r\nline two\r\n\ttabbed \r lone CR\n"
    (tmp_path / "crlf.txt").write_bytes(raw)
    documents = sources.load_documents(data_files=[str(tmp_path / "crlf.txt")])
    assert documents["text"] == [raw.decode("utf-8")]
    assert documents["text"][0].count("\r") == 3
