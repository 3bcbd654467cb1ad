"""The command line of the class shares: a predicted sheet's shares with the headline method, written to a file.

    python -m nblib.shares_cli RUN_DIR PREDICTED_SHEET OUT.csv [--group COLUMN] [--methods CC ACC ...] [--n-boot 1000]

The run's out-of-fold predictions give the error rates (:mod:`nblib.shares_pool`), the held-out check picks
and calibrates the headline method (:mod:`nblib.headline`); every method's shares go to ``OUT``, and with
``--group`` the differences between groups to ``OUT_differences``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import cli, headline
from .settings import PredictSettings
from .shares import CLI_NAMES, METHODS, MIN_GROUP, check_methods
from .shares_pool import pool_from_table, run_results
from .sheets import DataError, read_sheet, write_table, writer_kind

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m nblib.shares_cli RUN_DIR PREDICTED_SHEET OUT``; returns the exit status.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).
    """
    ap = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        prog="python -m nblib.shares_cli",
        description="Class shares of a predicted sheet with intervals; the headline method chosen on held-out "
        "shifted samples of the run's labelled texts (docs/shares.md).",
    )
    ap.add_argument(
        "run_dir", help="the run's results folder, results/<study>/models/<run> (its out-of-fold predictions)"
    )
    ap.add_argument("predicted", help="a sheet with one prob_<class> column per class, as nblib.predict writes it")
    ap.add_argument("output", help=".csv, .tsv or .xlsx to write (the suffix decides the format)")
    cli.add_sheet_options(ap, "the predicted file")
    ap.add_argument("--group", default=None, help="a column that groups the texts (shares per group)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help=f"of {' '.join(METHODS)}")
    ap.add_argument("--n-boot", **cli.from_setting(PredictSettings, "n_boot"))
    ap.add_argument(
        "--level",
        type=cli.float_in(0, 1, low_open=True, high_open=True),
        default=0.95,
        help="confidence level",
    )
    ap.add_argument("--check-repeats", **cli.from_setting(PredictSettings, "shift_repeats"))
    ap.add_argument("--check-boot", **cli.from_setting(PredictSettings, "coverage_boot"))
    ap.add_argument(
        "--check-shift",
        type=cli.float_in(1),
        default=2.0,
        help="the check makes its rarest class this many times more, its largest this many times less frequent ",
    )
    ap.add_argument(
        "--min-group",
        type=cli.positive_int,
        default=MIN_GROUP,
        help="groups with fewer texts are marked small",
    )
    ap.add_argument("--seed", type=cli.int_in(0), default=0, help="resampling seed")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = Path(args.output)
        diff_out = out.with_name(f"{out.stem}_differences{out.suffix}")
        for path in [out, diff_out] if args.group else [out]:
            if path.exists() and not args.overwrite:
                raise FileExistsError(f"{path} exists; choose another output file, or pass --overwrite.")
        writer_kind(out)
        methods = check_methods(args.methods, CLI_NAMES)
        res = run_results(args.run_dir, CLI_NAMES)
        sheet = read_sheet(args.predicted, [args.column], args.sheet, args.header_row, args.encoding, cli.SHEET_PARAMS)
        pool = pool_from_table(
            sheet.df, res.config["label_names"], res.predictions["text"], args.column, args.group, CLI_NAMES
        )
        choice = headline.run_choice(
            res,
            methods,
            args.shift_repeats,
            args.coverage_boot,
            args.level,
            args.seed,
            args.check_shift,
            len(pool.probs),
        )
        log.info("headline: %s", choice.reason)
        result = headline.pool_headline(res, pool, choice, methods, args.n_boot, args.level, args.seed, args.min_group)
    except (DataError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_table(result.table, out)
    if args.group:
        write_table(result.differences, diff_out)
        print(f"group differences ({choice.method}): {diff_out}")
    print(f"{len(pool.probs)} pool texts ({pool.repeated} repeating labelled texts and {pool.empty} empty left out).")
    whole = result.table[result.table["group"] == ""].pivot(index="class", columns="method", values="share")
    print(whole[list(dict.fromkeys(result.table["method"]))].round(3).to_string())
    print(headline.paper_sentence(result, unit="texts"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
