"""Every kind of bad input gets an error naming the file, line and field; the CLI exits 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workloads.errors import InputError, KvbenchError
from workloads.traces import load_trace

AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
T0 = "2023-11-16 18:15:46.6805900"
T1 = "2023-11-16 18:15:47.0000000"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        (
            "TIMESTAMP,Context,GeneratedTokens\n" + T0 + ",1,2\n",
            1,
            "ContextTokens",
            "missing column",
        ),
        ("TIMESTAMP,ContextTokens\n" + T0 + ",1\n", 1, "GeneratedTokens", "missing column"),
        (AZ + f"{T0},10,5\n{T1},1.5,5\n", 3, "ContextTokens", "not an integer"),
        (AZ + f"{T0},10,abc\n", 2, "GeneratedTokens", "not an integer"),
        (AZ + f"{T0},10,5\n{T1},-3,5\n", 3, "ContextTokens", ">= 1"),
        (AZ + f"{T0},10,0\n", 2, "GeneratedTokens", ">= 1"),
        (AZ + f"{T0},10,5\nyesterday,10,5\n", 3, "TIMESTAMP", "unparseable"),
        (AZ + f"{T1},10,5\n{T0},10,5\n", 3, "TIMESTAMP", "unsorted"),
        ("", 1, None, "empty file"),
        (AZ, 2, None, "no data rows"),
    ],
)
def test_azure_errors(tmp_path, text, line, field, message):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(InputError, match=message) as e:
        load_trace(path, format="azure")
    assert (e.value.row, e.value.field) == (line, field)
    assert str(e.value).startswith(path + f", line {line}")


def mc(t=0, p=600, o=5, ids="[1, 2]"):
    return f'{{"timestamp": {t}, "input_length": {p}, "output_length": {o}, "hash_ids": {ids}}}\n'


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        (mc() + '{"timestamp": 1, "input_length": 5\n', 2, None, "malformed JSON"),
        (mc() + mc(ids="[1]"), 2, "hash_ids", "do not cover"),
        (mc() + mc(ids="[1, 2, 3]"), 2, "hash_ids", "do not cover"),
        (mc(ids='["a", 2]'), 1, "hash_ids", "list of integers"),
        (mc(p='"600"'), 1, "input_length", "not an integer"),
        (mc(o=0), 1, "output_length", ">= 1"),
        (mc(t=-5), 1, "timestamp", ">= 0"),
        (mc(t=9) + mc(t=3), 2, "timestamp", "unsorted"),
        (
            '{"timestamp": 0, "input_length": 600, "hash_ids": [1, 2]}\n',
            1,
            "output_length",
            "missing",
        ),
        (mc() + "\n" + mc(), 2, None, "empty line"),
        ("", 1, None, "empty file"),
        ("[1, 2]\n", 1, None, "one JSON object"),
    ],
)
def test_mooncake_errors(tmp_path, text, line, field, message):
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(InputError, match=message) as e:
        load_trace(path, format="mooncake")
    assert (e.value.row, e.value.field) == (line, field)


def test_sharegpt_errors(tmp_path):
    path = write(tmp_path, "s.csv", "num_prefill_tokens,num_decode_tokens\n5,6\n7,x\n")
    with pytest.raises(InputError, match="not an integer") as e:
        load_trace(path, format="sharegpt")
    assert (e.value.row, e.value.field) == (3, "num_decode_tokens")


def test_too_long_request_with_clipping_off_names_its_line(tmp_path):
    path = write(tmp_path, "a.csv", AZ + f"{T0},10,5\n{T1},3000,100\n")
    with pytest.raises(InputError, match="exceed max_seq_len 2048") as e:
        load_trace(path, format="azure", max_seq_len=2048, clip=False)
    assert (e.value.row, e.value.field) == (3, "ContextTokens")
    w = load_trace(path, format="azure", max_seq_len=2048)
    assert w.num_clipped == 1 and (w.requests[1].prompt_len, w.requests[1].output_len) == (2047, 1)


def test_path_needs_a_format_and_names_need_to_exist(tmp_path):
    path = write(tmp_path, "a.csv", AZ + f"{T0},10,5\n")
    with pytest.raises(KvbenchError, match="format"):
        load_trace(path)
    with pytest.raises(KvbenchError, match="no such trace"):
        load_trace("not_a_trace")


def test_cli_exits_nonzero_without_traceback(tmp_path):
    path = write(tmp_path, "bad.jsonl", mc() + "{oops\n")
    cmd = [
        sys.executable,
        "-c",
        "from workloads.stats import main; main()",
        path,
        "--format",
        "mooncake",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {path}, line 2: malformed JSON")
    assert "Traceback" not in r.stderr
