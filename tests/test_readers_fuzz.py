"""Property tests: random bytes, random damage to real logs, and the damage classes seen in the
wild (JSON nested 100,000 deep, integers too large for a float, text where a step belongs, a crash's
NUL-filled tail, NaN/inf/absurd steps, a first record over 1 MiB) never make a reader or the
summary numbers raise anything but a one-line LogReadError naming the file.

Over 1,000 generated cases per run (the ``max_examples`` below), each on a short real log."""
import csv
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.plotting.cli import main
from events.plotting.summary import summarize
from events.readers import LogReadError, read_runs, sniff_format
from events.readers.table import SkippedLines
from events.readers.values import MAX_STEP

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
SAMPLE_LINES = 40
# The first lines of the training part of each real log (whole files would make each case slow).
SAMPLES = {}
for _folder in ("real-logs", "peer-logs"):
    for _name in sorted(os.listdir(os.path.join(FIXTURES, _folder))):
        if _name.endswith(".md"):
            continue
        with open(os.path.join(FIXTURES, _folder, _name), "rb") as _handle:
            _lines = _handle.read().split(b"\n")
        # Text logs start with hundreds of lines of environment and config: keep their training part.
        _start = next((i for i, line in enumerate(_lines) if b"iter: " in line or b"(train)" in line), 0)
        SAMPLES[_name] = _lines[max(0, _start - 5): _start + SAMPLE_LINES]
FORMAT = {name: sniff_format(b"\n".join(lines)) for name, lines in SAMPLES.items()}
JSON_SAMPLES = sorted(n for n, f in FORMAT.items() if f in ("detectron2-metrics", "detr-log", "mmdet-json", "mmengine-scalars"))
# The field each JSON dialect takes its step from (DETR: the epoch, else the line's index).
STEP_FIELD = {"detectron2-metrics": "iteration", "detr-log": "epoch", "mmdet-json": "iter", "mmengine-scalars": "step"}

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _for_summary(series, count=6):
    """The series that could break the summary (non-finite or huge values) and a few others:
    summarize() treats each series alone, and all ~100 of a DETR log would cost ~70 ms a case."""
    risky = [name for name, s in series.items() if not np.all(np.abs(s.values) < 1e300)]
    return {name: series[name] for name in (risky + list(series))[:count + len(risky)]}


def read_checked(path):
    """The tables of ``path``, or None when it is unreadable as a whole; asserts what must hold
    for any input: a one-line error naming the file, finite steps, a summary that computes."""
    try:
        tables = read_runs(path)
    except LogReadError as error:
        assert "\n" not in str(error) and str(error).startswith(str(path))
        return None
    assert tables
    for table in tables:
        for series in [*table.train.values(), *table.val.values(), *table.axes.values()]:
            assert np.all(np.abs(series.steps) <= MAX_STEP), "a NaN, infinite or absurd step was kept"
        summarize(dataclasses.replace(table, train=_for_summary(table.train), val=_for_summary(table.val)))
        report = table.skipped.summary(str(path))
        assert report is None or "\n" not in report
    return tables


def write(tmp_path_factory, name, lines):
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(b"\n".join(lines) if isinstance(lines, list) else lines)
    return path


def record_lines(lines):
    """``{index: record}`` of the lines of ``lines`` that are JSON objects with a step field."""
    found = {}
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and ("mode" in record or not any(k in record for k in ("env_info", "config"))):
            found[index] = record
    return found


def with_raw_value(record, key, token):
    """``record`` as a JSON line whose ``key`` holds ``token`` verbatim (``1e400``, 400 digits...)."""
    return json.dumps({**record, key: "@RAW@"}).replace('"@RAW@"', token).encode()


@settings(FUZZ, max_examples=60)
@given(data=st.binary(max_size=4000))
def test_random_bytes_never_raise(tmp_path_factory, data):
    read_checked(write(tmp_path_factory, "random.log", data))


_JUNK = st.binary(min_size=1, max_size=60)
_MUTATION = st.tuples(st.sampled_from(["truncate", "replace", "insert", "duplicate", "delete", "swap", "ansi_crlf", "join"]),
                      st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=10_000), _JUNK)


def _mutate(lines, mutations):
    lines = list(lines)
    for kind, a, b, junk in mutations:
        if not lines:
            break
        i, j = a % len(lines), b % len(lines)
        if kind == "truncate":
            lines[i] = lines[i][: b % (len(lines[i]) + 1)]
        elif kind == "replace":
            lines[i] = junk
        elif kind == "insert":
            lines.insert(i, junk)
        elif kind == "duplicate":
            lines.insert(i, lines[j])
        elif kind == "delete":
            del lines[i]
        elif kind == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "ansi_crlf":
            lines[i] = b"\x1b[31m" + lines[i] + b"\x1b[0m\r"
        elif kind == "join" and i + 1 < len(lines):
            lines[i: i + 2] = [lines[i] + lines[i + 1]]
    return lines


@settings(FUZZ, max_examples=100)
@given(name=st.sampled_from(sorted(SAMPLES)), mutations=st.lists(_MUTATION, min_size=1, max_size=25))
def test_random_line_mutations_of_real_logs_never_raise(tmp_path_factory, name, mutations):
    read_checked(write(tmp_path_factory, name, _mutate(SAMPLES[name], mutations)))


_NESTING = st.one_of(
    st.integers(1_000, 100_000).map(lambda depth: b"[" * depth),
    # A record nested less deeply than the recursion limit (which hypothesis raises) is read, see
    # the next test; these go far beyond it.
    st.integers(5_000, 30_000).map(lambda depth: b'{"a": ' * depth + b"1" + b"}" * depth),
    # (junk that starts a file with TensorBoard's marker makes it an event file: not this case)
    st.tuples(_JUNK.filter(lambda junk: b"{" not in junk and b"brain.Event:" not in junk), st.integers(5_000, 30_000)).map(
        lambda junk_depth: junk_depth[0] + b'{"a": ' * junk_depth[1] + b"1" + b"}" * junk_depth[1]),
)


@settings(FUZZ, max_examples=150)
@given(name=st.sampled_from(JSON_SAMPLES), position=st.integers(0, SAMPLE_LINES), nested=_NESTING)
def test_json_nested_too_deeply_is_a_skipped_line(tmp_path_factory, name, position, nested):
    lines = list(SAMPLES[name])
    lines.insert(position % len(lines), nested)
    tables = read_checked(write(tmp_path_factory, name, lines))
    assert tables is not None and tables[-1].skipped.lines >= 1


@settings(FUZZ, max_examples=60)
@given(name=st.sampled_from(JSON_SAMPLES), pick=st.integers(0, 1_000), depth=st.integers(10, 1_000))
def test_deeply_nested_values_inside_records_are_dropped(tmp_path_factory, name, pick, depth):
    lines = list(SAMPLES[name])
    records = record_lines(lines)
    index = sorted(records)[pick % len(records)]
    lines[index] = with_raw_value(records[index], "nested", '{"a": ' * depth + "1" + "}" * depth)
    tables = read_checked(write(tmp_path_factory, name, lines))
    assert tables is not None
    assert not any("nested" in key and key.count("/") > 8 for table in tables for key in table.train)


_HUGE_INTEGER = st.tuples(st.sampled_from(["", "-"]), st.integers(309, 500)).map(lambda sign_zeros: sign_zeros[0] + "1" + "0" * sign_zeros[1])


@settings(FUZZ, max_examples=150)
@given(name=st.sampled_from(JSON_SAMPLES), pick=st.integers(0, 1_000), key_pick=st.integers(0, 1_000),
       as_step=st.booleans(), huge=_HUGE_INTEGER)
def test_integers_too_large_for_a_float(tmp_path_factory, name, pick, key_pick, as_step, huge):
    lines = list(SAMPLES[name])
    records = record_lines(lines)
    index = sorted(records)[pick % len(records)]
    record = records[index]
    numeric = sorted(k for k, v in record.items() if type(v) in (int, float))
    key = STEP_FIELD[FORMAT[name]] if as_step or not numeric else numeric[key_pick % len(numeric)]
    lines[index] = with_raw_value(record, key, huge)
    tables = read_checked(write(tmp_path_factory, name, lines))
    if key == STEP_FIELD[FORMAT[name]]:
        assert tables is not None and tables[-1].skipped.lines >= 1  # the record, not the whole file


@settings(FUZZ, max_examples=150)
@given(name=st.sampled_from([n for n in JSON_SAMPLES if FORMAT[n] in ("mmdet-json", "mmengine-scalars")]),
       pick=st.integers(0, 1_000), key=st.sampled_from(["iter", "step", "epoch"]),
       value=st.one_of(st.text(max_size=8), st.integers(0, 99).map(str), st.booleans(), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_text_steps_in_mmdetection_and_mmengine_records(tmp_path_factory, name, pick, key, value):
    lines = list(SAMPLES[name])
    records = {i: r for i, r in record_lines(lines).items() if "mode" in r or "step" in r}
    index = sorted(records)[pick % len(records)]
    record = records[index]
    lines[index] = json.dumps({**record, key: value}).encode()
    tables = read_checked(write(tmp_path_factory, name, lines))
    step_fields = ("iter", "epoch") if FORMAT[name] == "mmdet-json" else ("step",)
    if key in step_fields and (key in record or FORMAT[name] == "mmdet-json"):
        assert tables is not None and tables[-1].skipped.lines >= 1


@settings(FUZZ, max_examples=150)
@given(name=st.sampled_from(sorted(SAMPLES)), cut=st.integers(0, 400), nul_bytes=st.integers(1, 300_000),
       newlines=st.lists(st.integers(0, 300_000), max_size=3))
def test_a_crash_tail_of_nul_bytes(tmp_path_factory, name, cut, nul_bytes, newlines):
    data = b"\n".join(SAMPLES[name])
    tail = bytearray(nul_bytes)
    for position in newlines:
        tail[position % nul_bytes] = ord("\n")
    path = write(tmp_path_factory, name, data[: len(data) - cut] + bytes(tail))
    tables = read_checked(path)
    if FORMAT[name] == "csv" and 0 in tail and data.rfind(b"\n", 0, len(data) - cut) > len(data) // 2:
        assert tables is not None and tables[-1].format == "csv" and tables[-1].skipped.lines >= 1


_BAD_STEP = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e300", "-1e20", str(2 ** 60), "1" + "0" * 400])


def _csv_with_bad_steps(lines, picks, token):
    """Put ``token`` in the step column of the rows ``picks`` point at; the indices changed."""
    header = lines[0].split(b",")
    column = header.index(b"step")
    changed = set()
    for pick in picks:
        index = 1 + pick % (len(lines) - 1)
        cells = lines[index].split(b",")
        if len(cells) == len(header):
            cells[column] = token
            lines[index] = b",".join(cells)
            changed.add(index)
    return changed


# The iteration of a detectron2 event line, the [iteration/ of an MMEngine training line.
_TEXT_STEP = {"detectron2-log": re.compile(rb"(?<![\w/.\[\]-])iter: *\d+"), "mmengine-log": re.compile(rb"\(train\).*?\[\s*\d+/")}


def _text_with_bad_steps(lines, fmt, picks, token):
    """Put ``token`` (digits only, for MMEngine's brackets) as the step of the training lines
    ``picks`` point at; the indices changed."""
    pattern = _TEXT_STEP[fmt]
    stepped = [i for i, line in enumerate(lines) if pattern.search(line)]
    changed = {stepped[pick % len(stepped)] for pick in picks}
    if fmt == "mmengine-log":
        token = token if token.isdigit() else "1" + "0" * 400
    for index in changed:
        match = pattern.search(lines[index])
        if fmt == "mmengine-log":
            replacement = match.group(0)[: match.group(0).rfind(b"[") + 1] + token.encode() + b"/"
        else:
            replacement = b"iter: " + token.encode()
        lines[index] = lines[index][: match.start()] + replacement + lines[index][match.end():]
    return changed


@settings(FUZZ, max_examples=250)
@given(name=st.sampled_from(sorted(SAMPLES)), picks=st.lists(st.integers(0, 1_000), min_size=1, max_size=4), token=_BAD_STEP)
def test_non_finite_and_absurd_steps_are_skipped_not_plotted(tmp_path_factory, name, picks, token):
    lines = list(SAMPLES[name])
    if FORMAT[name] == "csv":
        changed = _csv_with_bad_steps(lines, picks, token.lower().replace("infinity", "inf").encode())
    elif FORMAT[name] in _TEXT_STEP:
        changed = _text_with_bad_steps(lines, FORMAT[name], picks, token.lower().replace("infinity", "inf"))
    else:
        records = {i: r for i, r in record_lines(lines).items() if r.get("mode", "train") == "train"}
        changed = {sorted(records)[pick % len(records)] for pick in picks}
        for index in changed:
            lines[index] = with_raw_value(records[index], STEP_FIELD[FORMAT[name]], token)
    tables = read_checked(write(tmp_path_factory, name, lines))
    assert tables is not None and tables[-1].skipped.lines >= len(changed)


@settings(FUZZ, max_examples=40)
@given(name=st.sampled_from([n for n in JSON_SAMPLES if FORMAT[n] != "mmdet-json"]), size=st.integers(1 << 20, 3 << 19))
def test_a_first_record_over_1_mib_is_still_json(tmp_path_factory, name, size):
    lines = list(SAMPLES[name])
    index = min(record_lines(lines))
    lines[index] = with_raw_value(json.loads(lines[index]), "note", json.dumps("x" * size))
    tables = read_checked(write(tmp_path_factory, name, lines))
    clean = read_checked(write(tmp_path_factory, name, SAMPLES[name]))
    assert tables is not None and tables[-1].format == FORMAT[name]
    assert set(tables[-1].train) == set(clean[-1].train)


WASTE = "d2-metrics__Elbhnasy__Medical_Waste_Detection_Detectron2.json"
REPLOT = ["--quick", "--dpi", "40", "--jobs", "1"]


def _nastiest(folder):
    """Whole files of the cases that went to a traceback through tools/vis_train_log.py."""
    metrics = [line for line in SAMPLES[WASTE] if line]
    lightning = SAMPLES["lightning-csvlogger-metrics.csv"]
    cases = {
        "deep.json": [b"[" * 100_000 for _ in metrics],
        "nested.json": [b'{"a": ' * 5_000 + b"1" + b"}" * 5_000 for _ in metrics],
        "huge.json": [with_raw_value(json.loads(line), "iteration", "1" + "0" * 400) for line in metrics],
        "text_iter.log.json": [with_raw_value(r, "iter", json.dumps(str(r["iter"]))) if "iter" in r else json.dumps(r).encode()
                               for r in record_lines(SAMPLES["mmdet-log__boostcampaitech2__object-detection-level2-cv-15.json"]).values()],
        "crash.csv": [lightning[0], bytes(200_000)],
    }
    for name, lines in cases.items():
        (folder / name).write_bytes(b"\n".join(lines))
    return [folder / name for name in cases]


def test_nastiest_cases_through_the_replot_are_one_error_line(tmp_path, capsys):
    for path in _nastiest(tmp_path):
        code = main(["--log-file", str(path), "--output-dir", str(tmp_path / "plots"), *REPLOT])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: {path}: no training records found"), err
    # The script itself, as a user runs it.
    huge = tmp_path / "huge.json"
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "vis_train_log.py"), "--log-file", str(huge),
                             "--output-dir", str(tmp_path / "plots")], capture_output=True, text=True)
    records = len([line for line in SAMPLES[WASTE] if line])
    assert result.returncode == 2
    assert result.stderr == (f"error: {huge}: no training records found (read as a detectron2 metrics.json); {huge}: skipped "
                             f"{records} unreadable lines (e.g. line 1: step inf is not a usable iteration; line 2: step inf "
                             "is not a usable iteration; line 3: step inf is not a usable iteration)\n")


def test_nan_and_infinite_steps_are_left_out_of_the_replot(tmp_path, capsys):
    lines = list(SAMPLES[WASTE])
    for index, token in ((3, "NaN"), (7, "1e400"), (11, "-Infinity")):
        lines[index] = with_raw_value(json.loads(lines[index]), "iteration", token)
    path = tmp_path / "metrics.json"
    path.write_bytes(b"\n".join(lines))
    code = main(["--log-file", str(path), "--output-dir", str(tmp_path / "plots"), *REPLOT])
    assert code == 0
    assert f"{path}: skipped 3 unreadable lines (e.g. line 4: step nan is not a usable iteration; " \
        "line 8: step inf is not a usable iteration; line 12: step -inf is not a usable iteration)" in capsys.readouterr().out
    with open(tmp_path / "plots" / "summary.csv", newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["key"] == "total_loss" and row["split"] == "train")
    assert int(total["points"]) == len([line for line in SAMPLES[WASTE] if line]) - 3


def test_deep_nesting_without_orjson(monkeypatch):
    """Where orjson is not installed the standard library decodes first: its RecursionError is
    a skipped line too."""
    from events.readers import json_lines

    lines = list(SAMPLES[WASTE])
    lines[2:2] = [b"[" * 100_000, b'{"a": ' * 50_000 + b"1" + b"}" * 50_000]
    skipped = SkippedLines()
    monkeypatch.setitem(sys.modules, "orjson", None)  # "import orjson" raises ImportError
    try:
        assert importlib.reload(json_lines).fast_loads is json.loads
        decoded = json_lines.decode_json_lines(b"\n".join(lines), skipped)
    finally:
        monkeypatch.undo()
        importlib.reload(json_lines)
    assert skipped.lines == 2 and skipped.examples[0] == (3, "JSON nested too deeply")
    assert len(decoded.records) == len([line for line in SAMPLES[WASTE] if line])
