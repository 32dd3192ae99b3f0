"""The cwboot CLI against a real served API: main([...]) in-process, and one real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cwboot.cli import build_parser, main
from tests.api.harness import ADMIN, READER, ServedApi

ROOT = Path(__file__).resolve().parents[2]


def run(api: ServedApi, capsys: pytest.CaptureFixture[str], *argv: str, token: str = ADMIN) -> tuple[int, str, str]:
    code = main(["--url", api.url, "--token", token, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def ok(api: ServedApi, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(api, capsys, *argv)
    assert code == 0, err
    return out


def fails(api: ServedApi, capsys: pytest.CaptureFixture[str], *argv: str, token: str = ADMIN) -> str:
    code, out, err = run(api, capsys, *argv, token=token)
    assert code == 1, (out, err)
    assert err.startswith("cwboot: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_add_one_node_and_list_it_as_a_table(api: ServedApi, capsys: pytest.CaptureFixture[str]) -> None:
    out = ok(api, capsys, "nodes", "add", "--index", "0", "--mac", "52:54:00:00:00:00", "--group", "rack1", "--group", "gpu")
    assert "n0" in out and "52:54:00:00:00:00" in out
    lines = ok(api, capsys, "nodes", "ls").splitlines()
    assert lines[0].split() == ["NAME", "INDEX", "MAC", "IP", "BOOT_CONFIG", "GROUPS", "POWER"]
    # The IP column shows the address the default pool derives: 10.54.0.0 + 100 + index.
    assert lines[1].split() == ["n0", "0", "52:54:00:00:00:00", "10.54.0.100", "default", "rack1,gpu", "-"]


def test_bulk_add_from_a_csv_file(api: ServedApi, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    csv = tmp_path / "nodes.csv"
    csv.write_text(
        "# index,mac,boot_config,groups,attributes\n"
        "index,mac,boot_config,groups,attributes\n"
        '0,52:54:00:00:00:00,compute,rack1;gpu,"rack=1,row=a"\n'
        "1,52:54:00:00:00:01 52:54:00:00:01:01,compute,,\n"
        "\n"
        "2,52:54:00:00:00:02,,rack2,\n"
    )
    assert ok(api, capsys, "nodes", "add", "--file", str(csv)).strip() == "added 3 nodes: n[0-2]"
    nodes = json.loads(ok(api, capsys, "nodes", "ls", "--json"))
    assert [n["name"] for n in nodes] == ["n0", "n1", "n2"]
    assert nodes[0]["groups"] == ["rack1", "gpu"] and nodes[0]["attributes"] == {"rack": "1", "row": "a"}
    assert nodes[1]["mac"] == ["52:54:00:00:00:01", "52:54:00:00:01:01"]
    assert nodes[2]["boot_config"] == "default"


def test_bulk_add_json_from_stdin(api: ServedApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    docs = [{"index": i, "mac": f"52:54:00:00:01:{i:02x}"} for i in range(40)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(docs)))
    assert ok(api, capsys, "nodes", "add", "--file", "-", "--batch", "15").strip() == "added 40 nodes: n[0-39]"
    assert len(json.loads(ok(api, capsys, "nodes", "ls", "--json"))) == 40


def test_ranges_filters_show_update_rm(api: ServedApi, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "n.json"
    f.write_text(json.dumps([{"index": i, "mac": f"52:54:00:00:00:{i:02x}", "groups": ["even" if i % 2 == 0 else "odd"]} for i in range(10)]))
    ok(api, capsys, "nodes", "add", "--file", str(f))

    names = [n["name"] for n in json.loads(ok(api, capsys, "nodes", "ls", "n[2-4,8]", "--json"))]
    assert names == ["n2", "n3", "n4", "n8"]
    names = [n["name"] for n in json.loads(ok(api, capsys, "--json", "nodes", "ls", "--filter", "groups=odd"))]
    assert names == ["n1", "n3", "n5", "n7", "n9"]

    out = ok(api, capsys, "nodes", "update", "n[0-2]", "--boot-config", "debug", "attributes=rack=7")
    assert out.strip() == "updated 3 node: n[0-2]"
    shown = json.loads(ok(api, capsys, "nodes", "show", "n1", "--json"))
    assert shown["boot_config"] == "debug" and shown["attributes"] == {"rack": "7"}
    assert len(json.loads(ok(api, capsys, "nodes", "show", "n[1-2]", "--json"))) == 2
    text = ok(api, capsys, "nodes", "show", "n1")
    assert "boot_config" in text and "debug" in text

    assert ok(api, capsys, "nodes", "rm", "n[0-4]").strip() == "removed 5 node: n[0-4]"
    assert [n["name"] for n in json.loads(ok(api, capsys, "nodes", "ls", "--json"))] == ["n5", "n6", "n7", "n8", "n9"]


def test_power_password_is_accepted_and_never_printed(api: ServedApi, capsys: pytest.CaptureFixture[str]) -> None:
    ok(api, capsys, "nodes", "add", "--index", "1", "--power-uri", "ipmi://admin@10.1.0.1:623", "--power-password", "s3cr3t-pw")
    for argv in (["nodes", "show", "n1"], ["nodes", "show", "n1", "--json"], ["nodes", "ls", "--json"]):
        out = ok(api, capsys, *argv)
        assert "s3cr3t-pw" not in out and "power_password_set" in out


def test_boot_configs_pools_images_status_heads(api: ServedApi, capsys: pytest.CaptureFixture[str]) -> None:
    out = ok(api, capsys, "bootconfigs", "add", "compute", "--kernel", "vmlinuz", "--boot-style", "overlay", "cmdline=console=ttyS0 quiet")
    assert "compute" in out and "overlay" in out
    ok(api, capsys, "bootconfigs", "update", "compute", "--image", "rocky9")
    bc = json.loads(ok(api, capsys, "bootconfigs", "show", "compute", "--json"))
    assert bc["cmdline"] == "console=ttyS0 quiet" and bc["image"] == "rocky9"

    pool = json.loads(ok(api, capsys, "pools", "add", "gpu", "--prefix", "g", "--network", "10.60.0.0/24", "--ip-offset", "10", "--json"))
    assert pool["name"] == "gpu" and pool["ip_offset"] == 10
    assert json.loads(ok(api, capsys, "nodes", "add", "--index", "5", "--pool", "gpu", "--json"))["name"] == "g5"
    assert "10.60.0.15" in ok(api, capsys, "nodes", "ls", "g5")
    assert ok(api, capsys, "pools", "ls").splitlines()[0].split()[:3] == ["NAME", "PREFIX", "FIRST_INDEX"]

    # The image store's mirror writer (sync_objects) sets versions/latest: the API refuses them.
    api.in_loop(api.objects.create, "image", {"name": "rocky9", "latest": "1", "versions": [{"version": "1", "raw_size": 3 * 2**30, "compressed_size": 2**30}]})
    assert ok(api, capsys, "images", "ls").splitlines()[1].split() == ["rocky9", "1", "1", "3.0G", "1.0G", "-"]
    assert ok(api, capsys, "images", "rm", "rocky9").strip() == "removed 1 image: rocky9"

    assert ok(api, capsys, "status", "ls").split() == ["NAME", "STAGE", "HEAD", "MAC", "LAST_SEEN"]
    assert ok(api, capsys, "heads", "ls").split() == ["NAME", "ADDRESSES", "API", "HTTP"]
    assert ok(api, capsys, "bootconfigs", "rm", "compute").strip() == "removed 1 boot_config: compute"


def test_expected_errors_are_one_line_and_exit_1(api: ServedApi, capsys: pytest.CaptureFixture[str]) -> None:
    ok(api, capsys, "nodes", "add", "--index", "1", "--mac", "52:54:00:00:00:01")
    assert "(HTTP 409)" in fails(api, capsys, "nodes", "add", "--index", "2", "--mac", "52:54:00:00:00:01")
    assert "bad MAC" in fails(api, capsys, "nodes", "add", "--index", "3", "--mac", "nope")
    assert "(HTTP 404)" in fails(api, capsys, "nodes", "show", "n404")
    assert "unknown field 'colour'" in fails(api, capsys, "nodes", "update", "n1", "colour=red")
    assert "nothing to change" in fails(api, capsys, "nodes", "update", "n1")
    assert "backwards" in fails(api, capsys, "nodes", "rm", "n[5-1]")
    assert "not an integer" in fails(api, capsys, "nodes", "add", "--index", "seven")
    assert "admin token" in fails(api, capsys, "nodes", "rm", "n1", token=READER)
    assert "unknown token" in fails(api, capsys, "nodes", "ls", token="wrong")


def test_unreachable_api_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.etcd_server import free_port

    assert main(["--url", f"http://127.0.0.1:{free_port()}", "--token", "t", "nodes", "ls"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cwboot: cannot reach the API") and err.count("\n") == 1


def test_url_and_token_from_the_config_and_the_environment(
    api: ServedApi, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The served head wrote its admin token file into its state dir (tmp_path/admin.token).
    config = tmp_path / "cwboot.toml"
    config.write_text(f'[head]\nstate_dir = "{tmp_path}"\n[api]\nport = {api.binding.port}\n')
    assert main(["--config", str(config), "bootconfigs", "add", "a"]) == 0
    assert main(["bootconfigs", "add", "b", "--config", str(config)]) == 0
    assert main(["--set", f"head.state_dir={tmp_path}", "--set", f"api.port={api.binding.port}", "bootconfigs", "add", "c"]) == 0
    monkeypatch.setenv("CWBOOT_URL", api.url)
    monkeypatch.setenv("CWBOOT_TOKEN", READER)
    capsys.readouterr()
    assert main(["bootconfigs", "ls", "--json"]) == 0
    assert [b["name"] for b in json.loads(capsys.readouterr().out)] == ["a", "b", "c"]


def test_missing_token_and_bad_config_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--set", f"head.state_dir={tmp_path}", "nodes", "ls"]) == 1
    assert "no API token" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml"), "serve"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["--set", "api.prot=1", "--url", "http://x", "nodes", "ls"]) == 1
    assert "unknown key 'api.prot'" in capsys.readouterr().err


def test_usage_errors_exit_2_and_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["nodes"]) == 2
    assert main(["nodes", "frobnicate"]) == 2
    capsys.readouterr()
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        assert main([name, "--help"]) == 0
        assert capsys.readouterr().out.strip(), name
        verbs = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        for verb in verbs[0].choices if verbs else ():
            assert main([name, verb, "--help"]) == 0
            assert "usage: cwboot" in capsys.readouterr().out


def test_python_dash_m_cwboot_in_a_real_subprocess(api: ServedApi, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CWBOOT_URL": api.url, "CWBOOT_TOKEN": ADMIN}
    env.pop("CWBOOT_CONFIG", None)
    csv = tmp_path / "nodes.csv"
    csv.write_text("index,mac\n" + "".join(f"{i},52:54:00:00:02:{i:02x}\n" for i in range(16)))

    def cwboot(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cwboot", *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    added = cwboot("nodes", "add", "--file", str(csv))
    assert added.returncode == 0 and added.stdout.strip() == "added 16 nodes: n[0-15]", added.stderr
    listed = cwboot("nodes", "ls", "n[0-3]")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 5
    failed = cwboot("nodes", "show", "n99")
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith("cwboot: ") and "Traceback" not in failed.stderr
