"""``cwboot bootconfigs ls|show|add|update|rm``: what a node boots (in the spirit of scyld-bootctl)."""

from __future__ import annotations

import argparse

from cwboot.cli.object_commands import FieldOption, ObjectCommands, register_object_commands
from cwboot.cli.table import Column

BOOT_CONFIGS = ObjectCommands(
    kind="boot_config",
    command="bootconfigs",
    help="boot configs (kernel, initramfs, cmdline, image, boot style): ls, show, add, update, rm",
    columns=(
        Column("name", "name"),
        Column("image", "image"),
        Column("version", "image_version"),
        Column("style", "boot_style"),
        Column("kernel", "kernel"),
        Column("initramfs", "initramfs"),
        Column("cmdline", "cmdline"),
    ),
    options=(
        FieldOption("--kernel", "kernel", "kernel file name in the image store"),
        FieldOption("--initramfs", "initramfs", "initramfs file name in the image store"),
        FieldOption("--cmdline", "cmdline", "kernel command line"),
        FieldOption("--image", "image", "root filesystem image name"),
        FieldOption("--image-version", "image_version", "pin an image version ('' follows the latest)", metavar="VERSION"),
        FieldOption("--boot-style", "boot_style", "rwram (unpack into RAM), roram or overlay (read-only + overlayfs)", metavar="STYLE"),
        FieldOption("--description", "description", "free text"),
    ),
    examples="""examples:
  cwboot bootconfigs add compute --kernel vmlinuz-6.1 --initramfs initrd-6.1 --image rocky9 --boot-style rwram
  cwboot bootconfigs update compute cmdline="console=ttyS0 quiet"
  cwboot bootconfigs ls""",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    register_object_commands(subparsers, BOOT_CONFIGS)
