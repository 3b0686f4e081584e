"""Bad arguments of the analysis CLI and the diagnostics callback name the argument, the value and what is allowed
(checked before any model is loaded)."""

import pytest

from hizoo.analysis.__main__ import main
from hizoo.analysis.callback import DiagnosticsCallback


@pytest.mark.parametrize("extra, fragment", [
    (["--seq-len", "-3"], "argument --seq-len: must be an integer >= 1, got '-3'"),
    (["--seq-len", "0"], "argument --seq-len: must be an integer >= 1, got '0'"),
    (["--num-seqs", "-1"], "argument --num-seqs: must be an integer >= 1, got '-1'"),
    (["--num-seqs", "two"], "argument --num-seqs: must be an integer >= 1, got 'two'"),
    (["--data", "{missing}"], "--data {missing}: does not exist"),
    (["--data", "{tmp}"], "is a folder, not a file"),
    (["--data", "{binary}"], "--data {binary}: not UTF-8 text"),
    (["--data", "{empty}"], "--data {empty}: the file has no text"),
    (["--out", "{empty}"], "--out {empty} is a file"),
])
def test_bad_cli_arguments_are_reported_before_loading(tmp_path, capsys, extra, fragment):
    names = {"missing": str(tmp_path / "missing.txt"), "tmp": str(tmp_path), "binary": str(tmp_path / "b.txt"),
             "empty": str(tmp_path / "e.txt")}
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\xfa" * 10)
    (tmp_path / "e.txt").write_text(" \n")
    with pytest.raises(SystemExit) as done:
        main([str(tmp_path / "no-model"), *[e.format(**names) for e in extra]])
    assert done.value.code == 2
    assert fragment.format(**names) in capsys.readouterr().err


@pytest.mark.parametrize("name", ["scalars_every_n_steps", "figures_every_n_steps", "max_sequences"])
@pytest.mark.parametrize("value", [0, -1, True, 2.0, "5"])
def test_bad_callback_arguments_name_themselves(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a positive int, got {value!r}"):
        DiagnosticsCallback(**{name: value})
