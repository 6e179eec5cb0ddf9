"""``accelserve run PIPELINE.yaml``: the whole deployment pipeline from one config file.

Exit status: 0 every gate passed (the winner is in the repository), 2 a gate failed or no candidate qualifies
(the repository is unchanged), 1 a user error (config, data, model), 3 a bug, 130/143 stopped by SIGINT/SIGTERM
(partial report written, finished stages kept in the work dir).
"""

from __future__ import annotations

import argparse
import sys

from accelserve.errors import InvalidInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a deployment pipeline from a YAML file (export, search, gates, repository, reports)",
        description="Export the model, search compression recipes under an accuracy budget, pick the best by the "
        "objective, optionally serve it on tritonserver and load-test it, and add it to the Triton repository only "
        "when every gate passed. Stages are cached in the work dir. Exit status: 0 passed, 2 a gate failed, "
        "1 user error, 3 bug, 130/143 stopped by SIGINT/SIGTERM.",
    )
    p.add_argument("config", nargs="?", metavar="PIPELINE.yaml", help="the pipeline file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.max_accuracy_drop=1.0 (value read as YAML)")
    p.add_argument("--work-dir", metavar="DIR", help="cache and reports (default: .accelserve-run/NAME next to the config)")
    p.add_argument("--no-cache", action="store_true", help="recompute every stage (results are still stored)")
    p.add_argument("--dry-run", action="store_true", help="validate the config, print the plan and exit")
    p.add_argument("--schema", action="store_true", help="print the config's JSON Schema and exit")
    p.add_argument("--json", metavar="OUT.json", help="also write the JSON report here")
    p.add_argument("--junit", metavar="OUT.xml", help="also write the JUnit XML report here")
    p.add_argument("--markdown", metavar="OUT.md", help="also write the Markdown summary here")
    p.add_argument("--plot", metavar="OUT.png", help="also write the Pareto plot here")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from accelserve.pipeline import json_schema, run_pipeline
    from accelserve.pipeline.progress import Progress

    if args.schema:
        print(json_schema())
        return 0
    if not args.config:
        raise InvalidInputError("give a pipeline file: accelserve run PIPELINE.yaml", hint="--schema shows the format")
    result = run_pipeline(args.config, overrides=args.overrides, work_dir=args.work_dir, no_cache=args.no_cache,
                          dry_run=args.dry_run, json_path=args.json, junit_path=args.junit,
                          markdown_path=args.markdown, plot_path=args.plot, progress=Progress(quiet=args.quiet))
    if result.status == "planned":
        print(result.report["plan"])
        return 0
    from accelserve.pipeline.reports import markdown

    print(markdown(result.report))
    for path in result.files:
        print(f"wrote {path}")
    sys.stdout.flush()
    return result.exit_code
