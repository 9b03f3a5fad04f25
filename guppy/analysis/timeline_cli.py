"""guppy-timeline: what developed in a recorded run, and when, in plain words.

    guppy-timeline runs/demo-...                 # stages and births (cached in the run folder)
    guppy-timeline runs/induction-... --llc      # with the LLC of every checkpoint (devinterp)
    guppy-timeline runs/demo-... --quick         # the snapshot files only: no checkpoint loaded

Prints one line per event and writes timeline.csv, timeline_series.csv and timeline.json into the
run folder (llc.csv with --llc); a second call reads the cache unless the run changed since.
"""

from __future__ import annotations

import sys
import time

from guppy.cli import ArgumentParser, positive_int, run_main, torch_threads

PROG = "guppy-timeline"


def parser() -> ArgumentParser:
    from guppy.analysis.llc import LLCSettings
    from guppy.analysis.timeline import TimelineSettings

    d, s = LLCSettings(), TimelineSettings()
    p = ArgumentParser(prog=PROG, description="Find the stages and births of a recorded run, in plain words.")
    p.add_argument("run", help="a recorded run folder, e.g. runs/demo-20261201-120000")
    p.add_argument("--quick", action="store_true", help="snapshot files only: no checkpoint is loaded "
                   "(no ablation, topic probe or essential dynamics)")
    p.add_argument("--force", action="store_true", help="measure again even if the cached timeline is current")
    p.add_argument("--ablation-chats", type=positive_int, default=s.ablation_chats,
                   help=f"held-out chats for the ablation losses (default {s.ablation_chats})")
    p.add_argument("--probe-chats", type=positive_int, default=s.probe_chats,
                   help=f"held-out chats for the topic probes (default {s.probe_chats})")
    p.add_argument("--max-stages", type=positive_int, default=s.max_stages, help=f"at most (default {s.max_stages})")
    p.add_argument("--llc", action="store_true", help="estimate the LLC of every checkpoint first (devinterp SGLD)")
    p.add_argument("--llc-lr", type=float, default=d.lr, help=f"SGLD step size (default {d.lr:g})")
    p.add_argument("--llc-n-beta", type=float, default=d.n_beta, help=f"inverse temperature (default {d.n_beta:g})")
    p.add_argument("--llc-localization", type=float, default=d.localization,
                   help=f"pull back to the weights (default {d.localization:g})")
    p.add_argument("--llc-chains", type=positive_int, default=d.num_chains, help=f"(default {d.num_chains})")
    p.add_argument("--llc-draws", type=positive_int, default=d.num_draws, help=f"per chain (default {d.num_draws})")
    p.add_argument("--llc-chats", type=positive_int, default=d.chats, help=f"held-out chats (default {d.chats})")
    p.add_argument("--csv", action="store_true", help="print the timeline frame as CSV instead of words")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body():
        import guppy
        from guppy.analysis.llc import LLCSettings
        from guppy.analysis.timeline import TimelineSettings, plain_words, timeline, update_llc

        for name in ("llc_lr", "llc_n_beta", "llc_localization"):
            if not getattr(args, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
        run = guppy.open_run(args.run)
        if not run.snapshot_files:
            raise ValueError(f"{run.path}: no snapshots (record the run with guppy-train --record, or guppy-record)")
        if args.llc and not set(run.checkpoint_steps) & set(run.snapshot_files):
            raise ValueError(f"{run.path}: --llc needs the weights of the snapshot steps; this run kept none")
        settings = TimelineSettings(quick=args.quick, ablation_chats=args.ablation_chats,
                                    probe_chats=args.probe_chats, max_stages=args.max_stages)
        llc = LLCSettings(lr=args.llc_lr, n_beta=args.llc_n_beta, localization=args.llc_localization,
                          num_chains=args.llc_chains, num_draws=args.llc_draws, chats=args.llc_chats) if args.llc else None
        t0 = time.perf_counter()
        llc_s = 0.0
        with torch_threads(args.threads):
            if llc is not None:
                update_llc(run, llc)
                llc_s = time.perf_counter() - t0
            frame = timeline(run, settings, force=args.force)
        if args.csv:
            frame.to_csv(sys.stdout, index=False)
        else:
            print("\n".join(plain_words(frame)) or "no stages or births found")
            llc_said = f", the LLC series {llc_s:.1f}s of it ({llc.describe()})" if llc is not None else ""
            print(f"({len(frame)} events in {time.perf_counter() - t0:.1f}s{llc_said}; {run.path}/timeline.csv)",
                  file=sys.stderr)

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
