"""hactl probe io: argument handling (no network)."""

import argparse

import pytest

from hacontrol.cli import probe as cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hactl")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["probe", "io", "--target", "iqn.t", "--lun", "1", *argv])


@pytest.mark.parametrize(
    ("given", "expected"),
    [("10.77.0.1:3260", "10.77.0.1:3260"), ("10.77.0.1", "10.77.0.1:3260"), ("host:3261", "host:3261"),
     ("[fd77::1]:3260", "[fd77::1]:3260"), ("[fd77::1]", "[fd77::1]:3260")],
)
def test_portals(given, expected):
    assert cli.normalize_portal(given) == expected


@pytest.mark.parametrize("bad", ["10.77.0.1:x", ":3260", "10.77.0.1:0", "[fd77::1]:99999"])
def test_bad_portals(bad):
    with pytest.raises(cli.UsageError, match="HOST:PORT"):
        cli.normalize_portal(bad)


def test_parameters(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("chap-secret-123\n")
    args = parse("--portal", "10.77.0.1", "--portal", "10.77.0.3:3260", "--chap-user", "u", "--chap-secret-file",
                 str(secret), "--interval-ms", "20", "--duration", "5", "--region-blocks", "64")
    params = cli.build_params(args)
    assert params.portals == ("10.77.0.1:3260", "10.77.0.3:3260")
    assert params.interval_s == pytest.approx(0.02) and params.region_blocks == 64
    assert params.target.credentials.secret == "chap-secret-123"  # the trailing newline is not part of it
    assert args.func is cli.run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--chap-user", "u"], "go together"),
        (["--mutual-user", "m", "--mutual-secret-file", "/dev/null"], "needs --chap-user"),
        (["--interval-ms", "0"], "interval_s must be > 0"),
        (["--lun", "-1"], "--lun must be >= 0"),
    ],
)
def test_usage_errors(argv, message):
    with pytest.raises(cli.UsageError, match=message):
        cli.build_params(parse("--portal", "10.77.0.1", *argv))


def test_secret_file_errors_name_the_file_not_the_content(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(cli.UsageError, match="empty"):
        cli.build_params(parse("--portal", "a", "--chap-user", "u", "--chap-secret-file", str(empty)))
    missing = tmp_path / "missing"
    code = cli.run(parse("--portal", "a", "--chap-user", "u", "--chap-secret-file", str(missing)))
    assert code == cli.EXIT_UNUSABLE
    assert f"--chap-secret-file {missing}: cannot read" in capsys.readouterr().err
