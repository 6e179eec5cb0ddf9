"""``accelserve loadtest (URL | REPO) MODEL``: Locust load test against Triton, with reports and SLO gates.

Exit status: 0 every gate passed, 2 a gate failed, 1 a user error or a run that stopped early, 130/143 stopped by
SIGINT/SIGTERM. Whenever reports were asked for (--json, --csv, --html) they are written in every case: a run that
stopped early, was interrupted or was refused before the load started gets a report marked incomplete (complete:
false) with the reason; the gates of an incomplete run are not evaluated. This process is never gevent-patched:
the load runs in a child.
"""

from __future__ import annotations

import argparse
import sys

from typing import TYPE_CHECKING

from accelserve.errors import AccelserveError, InvalidInputError, ServerError, interruption_reason

if TYPE_CHECKING:
    from accelserve.loadtest.results import RunResult, SweepSettings

EXIT_GATE_FAILED = 2


def _levels(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidInputError(f"--{what} '{text}' is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise InvalidInputError(f"--{what} '{text}' needs positive values, e.g. --{what} 1,4,16")
    if what == "concurrency":
        if any(v != int(v) for v in values):
            raise InvalidInputError(f"--concurrency '{text}' needs whole numbers of concurrent requests")
        return tuple(int(v) for v in values)
    return values


def parse_fraction(text: str, what: str, *, at_most_one: bool = False) -> float:
    """``10%`` or ``0.1`` -> 0.1 (the --stability / --max-error-rate form, shared with ``tune``)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise InvalidInputError(f"--{what} '{text}' is not a percentage like 10% or a fraction like 0.1") from None
    if at_most_one and not 0 <= value <= 1:
        raise InvalidInputError(f"--{what} '{text}' must be between 0 and 1 (or 0% and 100%)")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loadtest",
        help="load-test a model on Triton with Locust (concurrency or request-rate sweep, reports, SLO gates)",
        description="Sweep concurrency (or request rate) against MODEL on a running Triton (URL) or on a local "
        "Triton started for the run (REPO). Each step warms up, then measures until throughput and p95 are stable "
        "(or for --duration). Reports client latency percentiles, throughput, errors and Triton's server-side "
        "breakdown. Exit status: 0 all gates passed, 2 a gate failed, 1 user error or incomplete run.",
    )
    p.add_argument("target", metavar="URL|REPO", help="http://HOST:PORT, grpc://HOST:PORT, or a model repository directory")
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("--protocol", choices=["http", "grpc"], help="protocol (default: the URL's scheme, else http)")

    load = p.add_argument_group("load")
    how = load.add_mutually_exclusive_group()
    how.add_argument("--concurrency", default=None, metavar="N,N,...",
                     help="concurrent requests per step, e.g. 1,2,4,8,16,32 (default 1)")
    how.add_argument("--rate", default=None, metavar="R,R,...", help="target requests/s per step (request-rate mode)")
    load.add_argument("--rate-users", type=int, default=16, metavar="N",
                      help="users (max in-flight requests) in rate mode (default 16)")
    load.add_argument("--workers", default="0", metavar="N|auto",
                      help="run the users in N local Locust worker processes under a master (default 0: one process); "
                      "auto: re-measure the steps where a generator process passed 80%% of a core with more workers "
                      "(up to one per core)")

    measure = p.add_argument_group("measurement")
    measure.add_argument("--duration", type=int, default=None, metavar="S",
                         help="fixed measurement of S seconds per step (no stability check)")
    measure.add_argument("--warmup", type=float, default=2.0, metavar="S", help="warm-up per step, excluded (default 2)")
    measure.add_argument("--window", type=int, default=2, metavar="S", help="stability window length (default 2)")
    measure.add_argument("--stability", default="10%", metavar="PCT",
                         help="throughput and p95 of the last windows within +/- PCT of their mean (default 10%%)")
    measure.add_argument("--stable-windows", type=int, default=3, metavar="N", help="windows that must agree (default 3)")
    measure.add_argument("--max-step-time", type=float, default=30.0, metavar="S",
                         help="stop waiting for stability after S seconds; the step is marked unstable (default 30)")

    req = p.add_argument_group("requests")
    req.add_argument("--batch", "--batch-size", dest="batch", type=int, default=None, metavar="N",
                     help="batch size of every request (default 1; must be <= the model's max_batch_size)")
    req.add_argument("--shape", action="append", metavar="NAME=DIMS",
                     help="full shape of an input with dynamic dims, batch dim included, e.g. ids=1x128 (repeatable)")
    req.add_argument("--range", action="append", metavar="[NAME=]LOW:HIGH",
                     help="range of random input values, for one input or all (repeatable; default -1:1, ints 0:100)")
    req.add_argument("--data", metavar="FILE.npz",
                     help="real samples: one array per input, first dim = samples, cut into batches")
    req.add_argument("--string-length", type=int, default=16, metavar="N",
                     help="characters of each random string for BYTES inputs (default 16)")
    req.add_argument("--string-data", metavar="TEXT", help="this text in every element of BYTES inputs (not random)")
    req.add_argument("--sequence-length", type=int, default=None, metavar="N",
                     help="sequence models: requests per sequence, START on the first and END on the last, one "
                     "correlation ID each; every user runs its own sequences (default 20, as perf_analyzer)")
    req.add_argument("--json-data", action="store_true", help="HTTP: send tensors as JSON instead of binary")
    req.add_argument("--seed", type=int, default=0, help="random data seed (default 0)")
    req.add_argument("--request-timeout", type=float, default=30.0, metavar="S", help="per-request timeout (default 30)")
    req.add_argument("--timeout", type=float, default=5.0, metavar="S",
                     help="seconds to wait for the server to answer the pre-run checks (default 5)")
    req.add_argument("--server-timeout", type=float, default=120.0, metavar="S",
                     help="REPO: seconds to wait for the local server's models to load (default 120)")

    out = p.add_argument_group("reports")
    out.add_argument("--json", metavar="OUT.json", help="write the result (stable keys; usable as --baseline)")
    out.add_argument("--csv", metavar="DIR", help="write DIR/steps.csv and DIR/windows.csv")
    out.add_argument("--html", metavar="OUT.html", help="write an HTML report with a latency-vs-throughput plot")
    out.add_argument("--work-dir", metavar="DIR",
                     help="keep the load process's job and live result files here (default: a temporary directory)")

    gates = p.add_argument_group("gates (exit 2 when one fails)")
    gates.add_argument("--slo", action="append", default=[], metavar="EXPR",
                       help="p99_ms<=50 (every step), throughput>=200 (best step), p95_ms<=20@16 (step 16); "
                       "metrics: throughput rps p50_ms p90_ms p95_ms p99_ms max_ms avg_ms error_rate errors")
    gates.add_argument("--max-error-rate", default="0", metavar="X",
                       help="largest error rate allowed at any step, fraction or %% (default 0: any error fails)")
    gates.add_argument("--baseline", metavar="OLD.json", help="compare with a previous --json result")
    gates.add_argument("--max-regression", default="10%", metavar="PCT",
                       help="allowed throughput drop / latency rise against --baseline (default 10%%)")
    gates.add_argument("--regression-metrics", default="throughput,p99_ms", metavar="M,M",
                       help="metrics compared with --baseline (default throughput,p99_ms)")
    gates.add_argument("--require-stable", action="store_true", help="fail when a step did not stabilize")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from accelserve.loadtest.results import SweepSettings

    context: dict[str, SweepSettings] = {}
    try:
        return _run(args, context)
    except _StoppedEarly:
        raise  # its reports are written
    except (AccelserveError, KeyboardInterrupt) as exc:
        from accelserve.loadtest import reports

        stopped = getattr(exc, "partial_result", None)
        if stopped is not None and stopped.steps:
            print(reports.text_table(stopped))
        if args.json or args.csv or args.html:
            if stopped is None:  # refused, or stopped before the load started: a report that says so
                stopped = _unmeasured(args, context.get("settings") or SweepSettings(), exc)
            _write_reports(stopped, args)
        if stopped is not None:
            print(_gates_not_evaluated(stopped), flush=True)
        raise


def _unmeasured(args: argparse.Namespace, settings: SweepSettings, exc: BaseException) -> RunResult:
    from datetime import datetime, timezone

    from accelserve.loadtest.results import RunResult

    if isinstance(exc, AccelserveError):
        reason = f"not run: {exc.message}"
    else:
        reason = f"{interruption_reason(exc)} before the load started"
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return RunResult(target={"url": args.target, "protocol": args.protocol, "model": args.model}, settings=settings,
                     complete=False, abort_reason=reason, started_at=now, finished_at=now)


def _write_reports(result: RunResult, args: argparse.Namespace) -> None:
    from accelserve.loadtest import reports

    written = []
    try:
        if args.json:
            written.append(reports.write_json(result, args.json))
        if args.csv:
            written += reports.write_csv(result, args.csv)
        if args.html:
            written.append(reports.write_html(result, args.html))
    except OSError as exc:
        sys.stderr.write(f"error: writing the reports failed: {exc}\n")
    for path in written:
        print(f"wrote {path}")


def _gates_not_evaluated(result: RunResult) -> str:
    return (f"gates: not evaluated, the run is incomplete ({result.abort_reason}; "
            f"{len(result.steps)} step(s) measured)")


def _run(args: argparse.Namespace, context: dict[str, SweepSettings]) -> int:
    from accelserve.loadtest import gates as gate_mod
    from accelserve.loadtest import reports
    from accelserve.loadtest.plan import parse_ranges
    from accelserve.loadtest.results import RunResult, SweepSettings
    from accelserve.loadtest.runner import RequestOptions, run_loadtest
    from accelserve.triton.client import parse_shape_overrides

    # ---- everything that can be wrong with the arguments fails here, before any server is touched
    if args.rate is not None:
        mode, levels = "rate", _levels(args.rate, "rate")
    else:
        mode, levels = "concurrency", _levels(args.concurrency or "1", "concurrency")
    workers_auto = args.workers.strip().lower() == "auto"
    try:
        workers = 0 if workers_auto else int(args.workers)
    except ValueError:
        raise InvalidInputError(f"--workers must be a whole number or 'auto', got '{args.workers}'") from None
    if workers < 0:
        raise InvalidInputError(f"--workers must be >= 0, got {workers}")
    if args.rate_users < 1:
        raise InvalidInputError(f"--rate-users must be >= 1, got {args.rate_users}")
    if args.duration is not None and args.duration < 1:
        raise InvalidInputError(f"--duration must be a whole number of seconds >= 1, got {args.duration}")
    if args.window < 1 or args.stable_windows < 2 or args.warmup < 0 or args.max_step_time <= 0:
        raise InvalidInputError("--window must be >= 1, --stable-windows >= 2, --warmup >= 0, --max-step-time > 0")
    tolerance = parse_fraction(args.stability, "stability")
    if not 0 < tolerance < 1:
        raise InvalidInputError(f"--stability '{args.stability}' must be between 0% and 100%")
    max_error_rate = parse_fraction(args.max_error_rate, "max-error-rate", at_most_one=True)
    slos = [gate_mod.Slo.parse(text) for text in args.slo]
    baseline = None
    if args.baseline:
        try:
            baseline = RunResult.load(args.baseline)
        except FileNotFoundError:
            raise InvalidInputError(f"--baseline {args.baseline}: no such file") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"--baseline {args.baseline} is not an accelserve load-test JSON result: {exc}") from None
    max_regression = gate_mod.parse_regression(args.max_regression)
    regression_metrics = [m.strip() for m in args.regression_metrics.split(",") if m.strip()]
    for metric in regression_metrics:
        if metric not in gate_mod.METRICS:
            raise InvalidInputError(f"--regression-metrics: unknown metric '{metric}'", hint="metrics: " + ", ".join(gate_mod.METRICS))

    settings = SweepSettings(
        mode=mode, levels=levels, rate_users=args.rate_users, warmup_s=args.warmup, window_s=args.window,
        stability_tolerance=tolerance, stability_windows=args.stable_windows, max_step_s=args.max_step_time,
        fixed_duration_s=args.duration, workers=workers, workers_auto=workers_auto, request_timeout_s=args.request_timeout,
    )
    context["settings"] = settings
    request = RequestOptions(
        batch=args.batch, shapes=parse_shape_overrides(args.shape), ranges=parse_ranges(args.range),
        data_file=args.data, binary_data=not args.json_data, seed=args.seed, request_timeout_s=args.request_timeout,
        string_length=args.string_length, string_data=args.string_data, sequence_length=args.sequence_length,
    )

    # ---- run
    result = run_loadtest(
        args.target, args.model, settings, protocol=args.protocol, request=request,
        connect_timeout_s=args.timeout, server_timeout_s=args.server_timeout, work_dir=args.work_dir,
    )

    # ---- gates (of a complete run only) and reports (written for an incomplete run too: what was measured)
    verdicts = gate_mod.evaluate(
        result, slos, max_error_rate=max_error_rate, baseline=baseline, max_regression=max_regression,
        regression_metrics=regression_metrics, require_stable=args.require_stable,
    ) if result.complete else []
    result.gates = [g.to_dict() for g in verdicts]
    print(reports.text_table(result))
    _write_reports(result, args)
    print(gate_mod.summary(verdicts) if result.complete else _gates_not_evaluated(result))
    sys.stdout.flush()
    if not result.complete:
        raise _StoppedEarly(
            f"the load test stopped early: {result.abort_reason}. "
            f"{len(result.steps)} step(s) measured; the reports above are marked incomplete"
        )
    return EXIT_GATE_FAILED if any(not g.passed for g in verdicts) else 0


class _StoppedEarly(ServerError):
    """The run stopped early; its reports are already written."""
