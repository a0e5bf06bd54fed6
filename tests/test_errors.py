import pytest

from bertkit.errors import InputError, run_script


def test_run_script_turns_an_input_error_into_one_line_and_exit_2(capsys):
    def main():
        raise InputError("data.csv:3: 2 fields, expected 3")

    with pytest.raises(SystemExit) as stop:
        run_script(main, "tool.py")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "tool.py: error: data.csv:3: 2 fields, expected 3\n"


def test_run_script_leaves_other_errors_alone():
    def main():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        run_script(main, "tool.py")
