"""``sdpalab sweep`` input errors: each malformed config gives exit code 2 and one line on
stderr that names the file and the key (table-driven), plus the other bad-input paths."""

import pytest

from cli_runner import run_cli

GOOD = "name: t\ndevice: cpu\nworkload: {seq_kv: 16, heads_q: 2, head_dim: 16}\n"

# (case, config text, what the one-line message must name)
MALFORMED = [
    ("wrong type", "name: t\nworkload: {batch: eight}", "workload.batch"),
    ("bool for int", "name: t\nworkload: {batch: true}", "workload.batch"),
    ("float for int", "name: t\nworkload: {head_dim: 64.5}", "workload.head_dim"),
    ("unknown top key", "name: t\nworkloads: {batch: 1}", "workloads: unknown key; valid: name"),
    ("unknown workload key", "name: t\nworkload: {seqkv: 16}", "workload.seqkv: unknown key"),
    ("unknown variants key", "name: t\nvariants: {backends: math}", "variants.backends"),
    ("empty axis", "name: t\nvariants: {backend: []}", "variants.backend: empty list"),
    ("negative size", "name: t\nworkload: {seq_kv: -1}", "workload.seq_kv: -1 must be"),
    ("zero size in list", "name: t\nworkload: {head_dim: [64, 0]}", "workload.head_dim[1]"),
    ("unknown backend", "name: t\nvariants: {backend: [math, flahs]}", "variants.backend[1]"),
    ("unknown mod", "name: t\nvariants: {mod: casual}", "variants.mod: 'casual' is not valid"),
    (
        "bad inline mod args",
        "name: t\nvariants: {mod: {sliding_window: {windw: 4}}}",
        "variants.mod: mod_args.windw",
    ),
    (
        "mod_args fit no mod",
        "name: t\nvariants: {mod: causal, mod_args: {window: 4}}",
        "variants.mod_args[0]",
    ),
    ("unknown kv_cache", "name: t\nvariants: {kv_cache: statc}", "variants.kv_cache"),
    ("unknown kv_quant", "name: t\nvariants: {kv_quant: int3}", "variants.kv_quant"),
    ("unknown kv_args key", "name: t\nvariants: {kv_args: {max_lenn: 8}}", "variants.kv_args"),
    ("unknown weight_quant", "name: t\nvariants: {weight_quant: int2}", "variants.weight_quant"),
    ("projections not bool", "name: t\nvariants: {projections: maybe}", "variants.projections"),
    ("unknown dtype", "name: t\nworkload: {dtype: fp32}", "workload.dtype: 'fp32'"),
    ("unknown phase", "name: t\nworkload: {phase: training}", "workload.phase"),
    ("zero repeats", "name: t\nmeasure: {repeats: 0}", "measure.repeats"),
    ("negative timeout", "name: t\nmeasure: {timeout_s: -5}", "measure.timeout_s"),
    ("unknown measure key", "name: t\nmeasure: {repeat: 5}", "measure.repeat: unknown key"),
    ("bad memory size", "name: t\nconstraints: {max_memory: lots}", "constraints.max_memory"),
    ("negative error budget", "name: t\nconstraints: {max_error: -0.1}", "constraints.max_error"),
    ("missing name", "device: cpu\nworkload: {batch: 1}", "name: required key is missing"),
    ("name not a dir name", "name: a/b", "name: 'a/b'"),
    ("unknown device", "name: t\ndevice: tpu", "device:"),
    ("yaml syntax", "name: t\nworkload: {batch: [1, 2}\n", "YAML syntax error"),
    ("duplicate key", "name: t\nname: u\n", "duplicate key 'name'"),
    ("top level a list", "- name: t\n", "top level must be a mapping"),
    ("empty file", "", "top level must be a mapping"),
    ("empty grids", "name: t\ngrids: []", "grids: empty list"),
    ("unknown grid key", "name: t\ngrids: [{varients: {backend: math}}]", "grids[0].varients"),
    (
        "zip lengths differ",
        "name: t\ngrids: [{zip: [seq_kv, head_dim], workload: {seq_kv: [8, 16], head_dim: 8}}]",
        "grids[0].zip",
    ),
    ("zip unknown axis", "name: t\ngrids: [{zip: [seqkv]}]", "grids[0].zip[0]"),
    ("only_on unknown", "name: t\ngrids: [{only_on: tpu}]", "grids[0].only_on"),
]


def test_enough_cases():
    assert len(MALFORMED) >= 30
    assert len({case for case, *_ in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(("case", "text", "names"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_exits_2_with_one_line(case, text, names, tmp_path, monkeypatch, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = run_cli(capsys, "sweep", path, "--out", tmp_path / "run")
    assert code == 2, (case, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert names in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # nothing ran


def test_missing_file_exits_2(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(capsys, "sweep", tmp_path / "nope.yaml")
    assert code == 2
    assert err.count("\n") == 1 and "no such file or preset; presets: case-study" in err


def test_bad_workers_exits_2(monkeypatch, capsys):
    code, _, err = run_cli(capsys, "sweep", "quick", "--workers", "0")
    assert code == 2 and "--workers 0" in err


def test_existing_run_needs_resume(tmp_path, monkeypatch, capsys):
    from sdpalab.measure.result import Result
    from sdpalab.run.rundir import ResultStore

    (tmp_path / "c.yaml").write_text(GOOD)
    with ResultStore(tmp_path / "run") as store:
        store.write(Result(variant={}, workload={}, trial_id="x"))
    code, _, err = run_cli(capsys, "sweep", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 2 and "already holds a run (1 trials); pass --resume" in err


def test_progress_callback_prints_a_summary_line():
    import io

    from rich.console import Console

    from sdpalab.measure.result import Result
    from sdpalab.report.progress import progress_callback

    buf = io.StringIO()
    console = Console(file=buf, width=40)
    with progress_callback(console) as on_result:
        for i, status in enumerate(["ok", "ok", "oom", "timeout", "ok"], start=1):
            on_result(Result(variant={}, workload={}, status=status), i, 5)
    text = buf.getvalue()
    assert text.count("\n") == 1  # not a terminal: no bar, one summary line, unwrapped
    assert "5 trials in" in text and "3 ok; failed: 1 oom, 1 timeout" in text
