"""``tomoprior study``: run a miscalibration study from a plan file, resumably, and report it
(see ``docs/study.md`` and :mod:`tomoprior.studies.study`).

Exit codes: 0 done (or stopped by ``--stop-after``); 2 a bad plan, a folder holding another
plan or another study, unreadable data; 128 + N when stopped by signal N (continue with
``--resume``: finished steps are skipped, training resumes from its last checkpoint).
"""

from __future__ import annotations

import click

from .dataset import DataError, interrupted


@click.group("study")
def study() -> None:
    """Resumable miscalibration study: `study run PLAN.yaml --out DIR`, `study report DIR`,
    `study archive DIR LEDGER` / `study restore LEDGER --out DIR` (carry a study to another machine)."""


@study.command("run")
@click.argument("plan", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Study folder (new, empty, or with "
              "--resume the folder of the same plan).")
@click.option("--resume", is_flag=True, help="Continue the study in --out: skip finished steps, resume training "
              "from its last checkpoint. Refused if the plan changed.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch threads (more than the free cores slows small 3D convolutions down many times).")
@click.option("--stop-after", type=click.IntRange(1), default=None,
              help="Stop after this many steps (e.g. to measure throughput); continue later with --resume.")
@click.option("--only", "only", multiple=True, metavar="PATTERN",
              help="Run only the training/evaluation steps matching this shell pattern (repeatable), e.g. "
              "--only 'train/agnostic/base/seed1' --only 'eval/agnostic/seed1/*'; the rest stays for --resume.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def run(plan, out, resume, threads, stop_after, only, quiet) -> None:
    """Run the study of PLAN (YAML) in --out, then write --out/report/."""
    import signal

    from .._atomic import Terminated, signals_as_exceptions
    from ..studies.study import run_study

    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    try:
        with signals_as_exceptions():
            res = run_study(plan, out, resume=resume, log=log, stop_after=stop_after, threads=threads,
                            only=only or None)
    except Terminated as exc:
        raise interrupted(exc.signum, f"the study in {out} stopped; continue it with "
                                      f"`tomoprior study run {plan} --out {out} --resume`") from None
    except KeyboardInterrupt:
        raise interrupted(signal.SIGINT, f"the study in {out} stopped; continue it with --resume") from None
    except (ValueError, OSError) as exc:
        raise DataError(str(exc)) from exc
    click.echo(f"{len(res['ran'])} step(s) run, {len(res['skipped'])} already done; "
               f"{res['steps_done']}/{res['steps_total']} steps finished")
    if res["stopped"]:
        click.echo(f"not finished: continue with `tomoprior study run {plan} --out {out} --resume`")
    else:
        click.echo(f"report: {res['report']}")


@study.command("report")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--no-figure", is_flag=True, help="Skip figure.png.")
@click.option("--partial", is_flag=True, help="Report a study that is still running: the refiners, arms and seeds "
              "evaluated so far, marked PARTIAL, with the missing steps named.")
def report(folder, no_figure, partial) -> None:
    """(Re)write FOLDER/report/ (report.md, report.json, figure.png) of a finished study (or, with
    --partial, of the part done so far)."""
    from ..studies.study import study_report

    try:
        path = study_report(folder, figure=not no_figure, partial=partial)
    except (ValueError, OSError) as exc:
        raise DataError(str(exc)) from exc
    click.echo(path.read_text(encoding="utf-8"))


@study.command("archive")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.argument("ledger", type=click.Path(file_okay=False))
@click.option("--no-checkpoints", is_flag=True, help="Leave out the checkpoints (a training under way then starts "
              "again after a restore).")
def archive(folder, ledger, no_checkpoints) -> None:
    """Copy the small part of study FOLDER into LEDGER, a folder version control can hold: plan,
    done-markers with budgets, evaluations, training logs, report, and the checkpoints still
    needed. The data files stay out (the plan makes them again). Run it again to update LEDGER."""
    from ..studies.study import archive_study

    try:
        man = archive_study(folder, ledger, checkpoints=not no_checkpoints)
    except (ValueError, OSError) as exc:
        raise DataError(str(exc)) from exc
    size = sum(f["bytes"] for f in man["files"].values())
    click.echo(f"{ledger}: {len(man['files'])} files, {size / 1e6:.1f} MB ({len(man['checkpoints'])} checkpoint(s)); "
               f"{man['steps_done']}/{man['steps_total']} steps done")


@study.command("restore")
@click.argument("ledger", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Study folder to fill (new, empty, "
              "or of the same plan: files it has are kept).")
def restore(ledger, out) -> None:
    """Fill study folder --out from LEDGER (made by `study archive`); then continue the study with
    `tomoprior study run PLAN --out OUT --resume` (missing data is made again from the plan)."""
    from ..studies.study import restore_study

    try:
        res = restore_study(ledger, out)
    except (ValueError, OSError) as exc:
        raise DataError(str(exc)) from exc
    click.echo(f"{out}: {len(res['copied'])} file(s) restored, {len(res['kept'])} kept; "
               f"{res['steps_done']}/{res['steps_total']} steps done. Continue with "
               f"`tomoprior study run PLAN --out {out} --resume`")
