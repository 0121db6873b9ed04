"""What each job kind does on a worker: ``compile`` runs the compiler's job, ``wait`` waits for a file."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from edgefleet.core.errors import DeadlineExceeded, FailedPrecondition
from edgefleet.server import tasks
from edgefleet.worker.runner import Executor, JobContext

#: after this many progress lines a compile job's estimated progress is about two thirds
_COMPILE_LINES = 12


def run_compile(ctx: JobContext) -> dict[str, Any]:
    """Compile the job's model for its target (:class:`edgefleet.compiler.job.CompileJob`); the
    output files go to the artifact store under ``jobs/<id>/attempt-<n>/``, the report into the
    job's result. Progress is an estimate from the job's step lines (the compiler has no total)."""
    try:
        from edgefleet.compiler.job import CompileJob, CompileRequest
        from edgefleet.compiler.signature import parse_input_spec
    except ImportError as exc:
        raise FailedPrecondition(
            f"this worker cannot compile: {exc.name or exc} is missing (pip install 'edgefleet[compiler]')"
        ) from exc

    p = ctx.params
    scratch = Path(tempfile.mkdtemp(prefix=f"edgefleet-job-{ctx.job_id[:12]}-"))
    try:
        request = CompileRequest(
            model=Path(p["Model"]),
            framework=p["Framework"],
            target=p["Target"],
            output_dir=scratch / "output",
            inputs=tuple(parse_input_spec(text) for text in p.get("Inputs", [])),
            backend=p.get("Backend", "auto"),
            quantize=p.get("Quantize", "auto"),
            calibration=Path(p["Calibration"]) if p.get("Calibration") else None,
            validation=Path(p["Validation"]) if p.get("Validation") else None,
            max_accuracy_drop=p.get("MaxAccuracyDrop", 1.0),
            tune_trials=p.get("TuneTrials", 0),
            tune_minutes=p.get("TuneMinutes", 0.0),
            threads=p.get("Threads", 0),
            benchmark_seconds=p.get("BenchmarkSeconds", 2.0),
        )
        lines = 0
        job: CompileJob | None = None

        def on_log(line: str) -> None:
            nonlocal lines
            lines += 1
            ctx.log(line)
            ctx.progress(0.95 * lines / (lines + _COMPILE_LINES / 2), line)
            if ctx.lost and job is not None:
                job.cancel()  # stops at the compiler's next step boundary

        job = CompileJob(request, job_id=ctx.job_id[:12], on_log=on_log, work_root=scratch)
        result = job.run()
        ctx.check()
        prefix = f"jobs/{ctx.job_id}/attempt-{ctx.attempt}"
        files = []
        for path in sorted(result.output_dir.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(result.output_dir).as_posix()}"
                ctx.artifacts.put_file(key, path)
                files.append({"Key": key, "Size": path.stat().st_size})
        ctx.log(f"stored {len(files)} files under {prefix}/ in the artifact store")
        return {
            "Report": result.report.to_dict(),
            "Metadata": result.metadata,
            "ArtifactPrefix": prefix,
            "Files": files,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_wait(ctx: JobContext) -> dict[str, Any]:
    """Wait until the file ``Path`` exists, then append ``<job> <attempt>`` to ``Touch`` (when
    given) and succeed; DEADLINE_EXCEEDED after ``TimeoutSeconds``."""
    path = Path(ctx.params["Path"])
    timeout = float(ctx.params["TimeoutSeconds"])
    started = time.monotonic()
    ctx.log(f"waiting for {path}")
    ctx.progress(0.5, f"waiting for {path}")
    while not path.exists():
        ctx.check()
        if time.monotonic() - started > timeout:
            raise DeadlineExceeded(f"{path} did not appear within {timeout:g} s")
        ctx.wait(0.05)
    ctx.check()
    touch = ctx.params.get("Touch")
    if touch:
        with open(touch, "a", encoding="utf-8") as out:
            out.write(f"{ctx.job_id} {ctx.attempt}\n")
    waited = time.monotonic() - started
    ctx.log(f"{path} appeared after {waited:.1f} s")
    return {"WaitedSeconds": round(waited, 3)}


#: job kind -> what runs it (every kind of :data:`edgefleet.server.tasks.KINDS`)
EXECUTORS: dict[str, Executor] = {tasks.COMPILE: run_compile, tasks.WAIT: run_wait}
