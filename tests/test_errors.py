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


def test_the_cli_reports_a_full_disk_or_a_refused_write_in_one_line(capsys, monkeypatch):
    import errno

    from bertkit import cli

    def write_fails(code):
        def cmd(args):
            raise OSError(code, "ignored", "runs/x/checkpoints/step-00000010/model.safetensors")
        return cmd

    for code, cause in ((errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"),
                        (errno.EACCES, "permission denied")):
        monkeypatch.setattr(cli, "cmd_info", write_fails(code))
        assert cli.main(["info"]) == 2
        assert capsys.readouterr().err == \
            f"bertkit: error: runs/x/checkpoints/step-00000010/model.safetensors: {cause}\n"


def test_the_cli_leaves_other_os_errors_alone(monkeypatch):
    from bertkit import cli

    def bug(args):
        raise FileNotFoundError(2, "No such file or directory", "/internal/path")

    monkeypatch.setattr(cli, "cmd_info", bug)
    with pytest.raises(FileNotFoundError):
        cli.main(["info"])
