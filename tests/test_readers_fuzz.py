"""Property tests: random bytes and random damage to real logs never make a reader (or the
summary numbers) raise anything but a one-line LogReadError."""
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.plotting.summary import summarize
from events.readers import LogReadError, read_runs

REAL = os.path.join(os.path.dirname(__file__), "fixtures", "real-logs")
# The first lines of each real log (whole files would make each example slow).
SAMPLES = {}
for _name in sorted(os.listdir(REAL)):
    if _name.endswith(".md"):
        continue
    with open(os.path.join(REAL, _name), "rb") as _handle:
        _lines = _handle.read().split(b"\n")
    # detectron2 logs start with ~800 lines of environment and config: keep their training part.
    _start = next((i for i, line in enumerate(_lines) if b"iter:" in line), 0)
    SAMPLES[_name] = _lines[max(0, _start - 5): _start + 120]

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _read_or_clean_error(path):
    try:
        tables = read_runs(path)
    except LogReadError as error:
        assert "\n" not in str(error)
        return
    assert tables
    for table in tables:
        summarize(table)
        if table.skipped.lines or table.skipped.values:
            assert "\n" not in table.skipped.summary(path)


@FUZZ
@given(data=st.binary(max_size=4000))
def test_random_bytes_never_raise(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "random.log"
    path.write_bytes(data)
    _read_or_clean_error(str(path))


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


@FUZZ
@given(name=st.sampled_from(sorted(SAMPLES)), mutations=st.lists(_MUTATION, min_size=1, max_size=25))
def test_random_line_mutations_of_real_logs_never_raise(tmp_path_factory, name, mutations):
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(b"\n".join(_mutate(SAMPLES[name], mutations)))
    _read_or_clean_error(str(path))
