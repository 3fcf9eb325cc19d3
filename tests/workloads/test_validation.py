"""Every kind of bad input gets an error naming the file, line and field; the CLI exits 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.experiments.test_cli import ROOT, assert_one_line_error, kvbench
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


BINARY = bytes(range(256)) * 4


@pytest.mark.parametrize("format", ["azure", "mooncake", "sharegpt"])
def test_binary_files_and_directories_are_named(tmp_path, format):
    path = tmp_path / "trace.bin"
    path.write_bytes(BINARY)
    with pytest.raises(InputError, match="not a text") as e:
        load_trace(str(path), format=format)
    assert str(e.value).startswith(str(path))
    with pytest.raises(InputError, match="is a directory") as e:
        load_trace(str(tmp_path), format=format)
    assert str(e.value).startswith(str(tmp_path))


def stats_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from workloads.stats import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_trace_stats_on_a_binary_file_or_a_directory(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_bytes(BINARY)
    assert_one_line_error(stats_cli(str(path), "--format", "mooncake"), str(path), "not a text")
    assert_one_line_error(stats_cli(str(tmp_path)), str(tmp_path), "is a directory")


def test_kvbench_on_a_binary_trace_or_a_directory(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_bytes(BINARY)
    for bad, message in ((path, "not a text"), (tmp_path, "is a directory")):
        r = kvbench(
            "workload=azure_conv",
            f"workload.path={bad}",
            f"hydra.run.dir={tmp_path / 'r'}",
            check=False,
        )
        assert_one_line_error(r, str(bad), message)


@pytest.mark.parametrize(
    "override, message",
    [
        ("workload.rate_scale=-1", "workload.rate_scale must be > 0, got -1"),
        ("workload.max_requests=0", "workload.max_requests must be >= 1, got 0"),
        ("workload.length_scale=0", "workload.length_scale must be > 0, got 0"),
    ],
)
def test_workload_keys_are_named(tmp_path, override, message):
    r = kvbench(override, "progress=false", f"hydra.run.dir={tmp_path}", check=False)
    assert_one_line_error(r, message)


def test_every_workload_takes_max_requests_and_clipping_warns(tmp_path):
    r = kvbench("workload.max_requests=25", "progress=false", f"hydra.run.dir={tmp_path / 'a'}")
    assert "25 / 25 finished" in r.stdout and "warning" not in r.stderr
    r = kvbench(
        "workload.max_requests=25",
        "max_seq_len=10",
        "kv_budget_gib=null",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'b'}",
    )
    assert r.stderr.startswith("warning: 25 of 25 requests (100.0%) are longer than max_seq_len=10")


def test_length_scale_scales_prompts_and_outputs(tmp_path):
    from workloads.synthetic import synthetic

    base = synthetic(max_requests=50, seed=4)
    double = synthetic(max_requests=50, seed=4, length_scale=2.0)
    for a, b in zip(base.requests, double.requests):
        assert (b.prompt_len, b.output_len) == (2 * a.prompt_len, 2 * a.output_len)
        assert a.arrival_s == b.arrival_s
    path = write(tmp_path, "a.csv", AZ + f"{T0},10,5\n{T1},1,1\n")
    w = load_trace(path, format="azure", length_scale=0.5)
    assert [(r.prompt_len, r.output_len) for r in w.requests] == [(5, 2), (1, 1)]
    with pytest.raises(KvbenchError, match="length_scale must be 1 for a trace with hash_ids"):
        load_trace(write(tmp_path, "m.jsonl", mc()), format="mooncake", length_scale=2.0)
