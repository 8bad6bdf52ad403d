"""Reference FASTA: streamed record by record, one clear error per bad record, odd sequences skipped and counted."""

from __future__ import annotations

import pytest

from esmsae.inputs.fasta import Skipped, read_fasta, reference_sequences
from esmsae.pipeline.errors import InputError


def write(tmp_path, text, name="ref.fa"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_records_are_read_cleaned_and_in_order(tmp_path):
    path = write(tmp_path, ">a first protein\nMKV\nlla*\n; a comment\n\n>b\nACD\n")
    assert list(read_fasta(path)) == [("a", "MKVLLA"), ("b", "ACD")]


@pytest.mark.parametrize("text,message", [
    ("", r"ref\.fa: the reference FASTA has no records"),
    ("\n\n", r"ref\.fa: the reference FASTA has no records"),
    ("MKV\n>a\nMKV\n", r"ref\.fa, line 1: sequence data before the first '>'"),
    (">a\nMKV\n>\nMKV\n", r"ref\.fa, line 3: a FASTA record without a name"),
    (">a\nMKV\n>b\nACD\n>a\nMKV\n", r"ref\.fa, record 'a' \(line 5\): the name is used twice"),
    (">a\nMKV\n>b\nAC1D\n", r"ref\.fa, record 'b' \(line 3\): '1' is not an amino-acid code"),
    (">a\nMK-V\n", r"ref\.fa, record 'a' \(line 1\): '-' is not an amino-acid code"),
    (">a\n\n>b\nMKV\n", r"ref\.fa, record 'a' \(line 1\): the sequence is empty"),
])
def test_bad_input_names_file_and_record(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        list(read_fasta(write(tmp_path, text)))


def test_missing_file_names_the_config_key(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.fa: reference FASTA not found \(config key features.reference\)"):
        list(read_fasta(tmp_path / "nowhere.fa"))


def test_streams_record_by_record(tmp_path):
    """The first records come out before a bad record further down is read: nothing loads the whole file."""
    path = write(tmp_path, ">a\nMKV\n>b\nACD\n>c\nAC1D\n")
    records = read_fasta(path)
    assert next(records) == ("a", "MKV")
    assert next(records) == ("b", "ACD")
    with pytest.raises(InputError, match="record 'c'"):
        next(records)


def test_reference_sequences_skip_and_count(tmp_path):
    path = write(tmp_path, ">long\n" + "A" * 30 + "\n>x\nMKXV\n>u\nMKUV\n>ok1\nMKV\n>ok2\nACD\n>ok3\nEFG\n>bad\nA1\n")
    skipped = Skipped()
    out = list(reference_sequences({"WT": "MKVL"}, path, max_sequences=2, max_length=20, skipped=skipped))
    assert out == [("WT", "MKVL"), ("ok1", "MKV"), ("ok2", "ACD")]
    assert (skipped.too_long, skipped.other_residues, skipped.reached_max) == (1, 2, True)
    assert skipped.names == ["long", "x", "u"]
    # Reading stops at max_sequences: the bad record at the end is never reached.
    assert list(reference_sequences({}, None, 5, 20, Skipped())) == []
