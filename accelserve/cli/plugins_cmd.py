"""``accelserve plugins``: list installed plugins per group, and optionally try to load each."""

from __future__ import annotations

import argparse

from accelserve import plugins
from accelserve.errors import PluginError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list installed exporters, passes, runtimes and reporters")
    p.add_argument("--group", choices=sorted(plugins.GROUPS), help="only this group")
    p.add_argument("--check", action="store_true", help="import every plugin and report those that fail")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    failed = 0
    current = None
    for info in plugins.list_plugins(args.group):
        if info.group != current:
            current = info.group
            print(f"{info.group} ({plugins.GROUPS[info.group]}):")
        origin = "built-in" if info.builtin else f"from {info.distribution}"
        status = ""
        if args.check:
            try:
                plugins.load(info.group, info.name)
                status = "  [ok]"
            except PluginError as exc:
                failed += 1
                status = f"  [FAILED: {exc.message}]"
        print(f"  {info.name:<24} {info.value}  ({origin}){status}")
    return 1 if failed else 0
