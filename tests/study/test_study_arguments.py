"""Bad arguments of ``python -m hizoo.study`` stop at parse time, naming the argument and what is allowed."""

import pytest

from hizoo.study.__main__ import main


@pytest.mark.parametrize("extra, fragment", [
    (["--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--steps", "-5"], "--steps must be >= 1, got -5"),
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--variants", "mixtral"], "mixtral"),
    (["--scale", "huge"], "argument --scale: invalid choice: 'huge'"),
    (["--out", "{file}"], "--out {file} is a file"),
    (["--data", "{missing}"], "--data {missing}: does not exist"),
    (["--data", "hf:wikitext", "{file}"], "--data hf:wikitext: a hub data set is a whole corpus; give it alone"),
])
def test_bad_study_arguments(tmp_path, capsys, extra, fragment):
    names = {"file": str(tmp_path / "f.txt"), "missing": str(tmp_path / "missing.txt")}
    (tmp_path / "f.txt").write_text("text\n")
    with pytest.raises(SystemExit) as done:
        main(["moe", "--scale", "toy", *[e.format(**names) for e in extra]])
    assert done.value.code == 2
    assert fragment.format(**names) in capsys.readouterr().err
