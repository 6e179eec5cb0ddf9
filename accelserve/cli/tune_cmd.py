"""``accelserve tune (URL | REPO) MODEL``: search the model's serving config for the best throughput within SLOs.

Exit status: 0 a config meets the constraints (the winner is reported; written only with --apply), 2 no config
meets them, 1 a user error. SIGINT/SIGTERM stop the search; the reports of what was measured are still written.
"""

from __future__ import annotations

import argparse

from accelserve.errors import InvalidInputError

EXIT_GATE_FAILED = 2


def _ints(text: str | None, what: str, *, minimum: int = 0) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidInputError(f"--{what} '{text}' is not a comma-separated list of whole numbers") from None
    if not values or any(v < minimum for v in values):
        raise InvalidInputError(f"--{what} '{text}' needs values >= {minimum}")
    return tuple(dict.fromkeys(values))


def _bools(text: str | None) -> tuple[bool, ...] | None:
    if text is None:
        return None
    table = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
    try:
        values = tuple(dict.fromkeys(table[v.strip().lower()] for v in text.split(",") if v.strip()))
    except KeyError:
        raise InvalidInputError(f"--dynamic-batching '{text}' is not a list of on/off") from None
    if not values:
        raise InvalidInputError("--dynamic-batching needs on, off or on,off")
    return values


def _preferred(text: str | None) -> tuple[tuple[int, ...], ...] | None:
    if text is None:
        return None
    out = []
    for group in text.split(";"):
        group = group.strip()
        if group.lower() in ("", "none", "-"):
            out.append(())
            continue
        sizes = _ints(group, "preferred-batch-sizes", minimum=1)
        assert sizes is not None
        out.append(sizes)
    return tuple(dict.fromkeys(out))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="search the Triton serving config (instances, threads, batching) for the best throughput within SLOs",
        description="Measure MODEL's own config, then candidate configs (brute: every combination of the axes; "
        "quick: hill climbing from the default), each loaded through Triton's model-control API (a staged copy of "
        "REPO; a URL's server must run in explicit model-control mode) and load-tested over client concurrency. "
        "Reports every config and the winner; --apply writes the winner's config.pbtxt into REPO (atomically, "
        "model files untouched). Exit status: 0 a config meets the constraints, 2 none does, 1 user error.",
    )
    p.add_argument("target", metavar="URL|REPO", help="a model repository directory, or http://HOST:PORT of a Triton "
                   "running with --model-control-mode=explicit")
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("--protocol", choices=["http", "grpc"], help="protocol of the load (default http)")
    goal = p.add_argument_group("objective and constraints")
    goal.add_argument("--objective", choices=["throughput", "latency"], default="throughput",
                      help="maximise throughput (default) or minimise p99 latency")
    goal.add_argument("--slo", action="append", default=[], metavar="EXPR",
                      help="a constraint every chosen point must meet, e.g. 'p99_ms<=20' (repeatable)")
    goal.add_argument("--max-error-rate", default="0", metavar="X", help="failed/all requests allowed (default 0)")
    search = p.add_argument_group("search")
    search.add_argument("--mode", choices=["brute", "quick"], default="quick",
                        help="brute: cross product of the axes; quick: hill climbing from the default (default)")
    search.add_argument("--budget-minutes", type=float, default=30.0, metavar="M", help="stop after M minutes (30)")
    search.add_argument("--instances", metavar="N,N", help="instance counts (default: 1, cores/2, cores)")
    search.add_argument("--threads", metavar="N,N",
                        help="ONNX Runtime intra-op threads per instance, intra_op_thread_count (default: 1, cores)")
    search.add_argument("--max-batch-sizes", metavar="N,N", help="max_batch_size values (default: the config's)")
    search.add_argument("--dynamic-batching", metavar="on,off", help="dynamic batching (default: off,on if batching)")
    search.add_argument("--preferred-batch-sizes", metavar="A,B;C",
                        help="';'-separated sets of preferred batch sizes, 'none' for none (default: none)")
    search.add_argument("--max-queue-delays", metavar="US,US",
                        help="max_queue_delay_microseconds values (default: 0)")
    load = p.add_argument_group("load per config")
    load.add_argument("--concurrency", default="1,2,4,8,16", metavar="N,N",
                      help="client concurrencies swept per config, ascending; a config's sweep stops when a latency "
                      "bound fails or throughput gains < 5%% (default 1,2,4,8,16)")
    load.add_argument("--duration", type=int, default=3, metavar="S", help="seconds measured per point (default 3)")
    load.add_argument("--warmup", type=float, default=1.0, metavar="S", help="warm-up per point (default 1)")
    load.add_argument("--workers", default="0", metavar="N|auto",
                      help="Locust worker processes (default 0); auto: more where a generator passes 80%% of a core")
    load.add_argument("--batch", type=int, default=None, metavar="N", help="samples per request (default 1)")
    load.add_argument("--server-timeout", type=float, default=180.0, metavar="S", help="server start-up timeout")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="write tune.json, tune.csv, tune.html and tune.png here")
    out.add_argument("--apply", action="store_true",
                     help="write the winner's config.pbtxt into REPO (only when it meets the constraints)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from accelserve.cli.loadtest_cmd import parse_fraction
    from accelserve.loadtest.gates import Slo
    from accelserve.loadtest.runner import check_locust_installed, looks_like_path
    from accelserve.tune import report
    from accelserve.tune.apply import apply_config
    from accelserve.tune.search import TuneConfig, tune

    for text in args.slo:
        Slo.parse(text)
    if args.apply and not looks_like_path(args.target):
        raise InvalidInputError("--apply writes into a model repository: give REPO, not a URL")
    concurrency = _ints(args.concurrency, "concurrency", minimum=1)
    workers_auto = args.workers.strip().lower() == "auto"
    workers = 0 if workers_auto else (_ints(args.workers, "workers") or (0,))[0]
    try:
        config = TuneConfig(
            target=args.target, model=args.model, protocol=args.protocol, mode=args.mode, objective=args.objective,
            slos=tuple(args.slo),
            max_error_rate=parse_fraction(args.max_error_rate, "max-error-rate", at_most_one=True),
            budget_minutes=args.budget_minutes, instances=_ints(args.instances, "instances", minimum=1),
            threads=_ints(args.threads, "threads"), max_batch_sizes=_ints(args.max_batch_sizes, "max-batch-sizes"),
            dynamic_batching=_bools(args.dynamic_batching),
            preferred_batch_sizes=_preferred(args.preferred_batch_sizes),
            max_queue_delays_us=_ints(args.max_queue_delays, "max-queue-delays"), concurrency=concurrency,
            warmup_s=args.warmup, duration_s=args.duration, workers=workers,
            workers_auto=workers_auto, batch=args.batch,
            server_timeout_s=args.server_timeout,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise InvalidInputError(f"invalid tune settings: {problems}") from None
    check_locust_installed()

    def log(line: str) -> None:
        print(line, flush=True)

    result = tune(config, log=log)  # SIGINT/SIGTERM (cli.main's handlers) end the search; reported below
    print()
    print(report.text_table(result))
    print(report.summary(result))
    if args.out:
        for path in report.write_all(result, args.out):
            print(f"wrote {path}")
    if result.interruption is not None:
        raise result.interruption  # cli.main: exit 130 (SIGINT) or 143 (SIGTERM)
    if not result.passed:
        return EXIT_GATE_FAILED
    if args.apply:
        assert result.winner is not None and result.default is not None
        if result.winner is result.default:
            print(f"--apply: the default config won; {args.target}/{args.model}/config.pbtxt left as it is")
        else:
            path = apply_config(args.target, args.model, result.winner.config_text,
                                expected_old=result.default.config_text)
            print(f"applied {result.winner.name} to {path}")
    return 0
