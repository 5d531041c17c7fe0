"""Does the scaling model predict runs it was not fitted on? The check behind the README's scaling section.

    sudo python benchmarks/scaling_prediction.py [--links 100mbit,400mbit] [--hosts 6] [--repeats 3] [--append]

On the Slurm lab (tests/cluster/lab.sh; root), for each link speed: the lab comes up with HOSTS hosts whose links
are shaped to that speed both ways; `hpc-mnist comm` sweeps the all-reduce on 2 and 3 hosts (sbatch);
jobscripts/scaling_slurm.sh, edited only where its header says, sweeps the tutorial MLP over 1 .. HOSTS hosts and
the tutorial CNN over 1 .. 3 hosts, REPEATS runs each, one rank per host; `hpc-mnist scaling report --comm`
fits the model on the 1-host point, the comm sweeps and the points at the comm sweeps' host counts (MLP: 2 and 3
hosts; CNN: the 2-host sweep only) and predicts the rest. A prediction passes within 15% of the measured median;
a point whose repeats spread over more than 30% of it (+-15%) cannot tell, and is reported as unmeasurable.
Not fitted on, only to tell a wrong model from a lab that no longer measures the network: `hpc-mnist comm` on
HOSTS hosts too, whose MLP-gradient all-reduce the record puts beside the ring model's time for it.

Writes benchmarks/scaling-prediction-DATE.json (--append: adds these links to the day's record, replacing any
measured again), benchmarks/scaling-prediction.md, each report's tables under benchmarks/scaling-prediction-DATE/
and its figure as docs/scaling-prediction-MODEL-LINK.png; the runs themselves are deleted (--keep keeps them).
Holds the lab's lock (/tmp/hpc_mnist-lab-slurm.lock) throughout and takes the lab down at the end, so the next
`up` gives the defaults. --wait-idle: before each link, wait until no /tmp/hpc_mnist-BUSY exists and the
1-minute load is below 0.8, and hold /tmp/hpc_mnist-MEASURING while measuring (the protocol of a machine shared
by several sessions).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hpc_mnist.perf import ring
from hpc_mnist.perf.allreduce import read_sweep

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "tests" / "cluster" / "lab.sh"
LAB_DIR = Path(os.environ.get("HM_LAB_DIR", "/tmp/hm-lab"))
LOCK = Path("/tmp/hpc_mnist-lab-slurm.lock")
TOLERANCE = 0.15
COMM_HOSTS = (2, 3)


@dataclass(frozen=True)
class Study:
    """One model's sweep: its config, the hosts it runs on, what each point trains, the comm files it is fitted on."""

    model: str
    config: str
    hosts: int
    batch: int  # per rank
    epochs: int
    train_samples: int  # synthetic digits (before the 20% validation split): sets the steps per epoch
    fit_hosts: tuple[int, ...]


def studies(hosts: int) -> list[Study]:
    # MLP: 179 kB of gradients against ~0.7 ms of compute at batch 32: the all-reduce is most of the step, so
    # six one-thread ranks on 2 cores still measure the network. CNN: 4.8 MB against ~40 ms.
    return [Study("mlp", "configs/mlp.yaml", hosts, 32, 2, 30000, COMM_HOSTS),
            Study("cnn", "configs/cnn.yaml", 3, 32, 1, 6000, COMM_HOSTS[:1])]


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, **kw)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n"
                         f"{result.stderr[-2000:]}")
    return result


def lab(verb: str, hosts: int = 3, link: str = "") -> None:
    sh([str(LAB), verb], env={**os.environ, "HM_LAB_NODES": str(hosts), "HM_LAB_LINK": link})


def slurm_env() -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(LAB_DIR / "slurm" / "slurm.conf"), "OMP_NUM_THREADS": "1"}


def comm(work: Path, hosts: int) -> tuple[Path, str]:
    """`hpc-mnist comm` on `hosts` lab hosts, one rank each, in a batch job; its JSON and the job's command."""
    out = work / f"comm-{hosts}hosts.json"
    py = sys.executable
    inner = (f"cd {shlex.quote(str(REPO))} && {py} -m hpc_mnist.launch --system slurm --nodes {hosts} --ppn 1 -- "
             f"{py} -m hpc_mnist.comm --max-bytes 4194304 --json {out}")
    cmd = ["sbatch", "-W", "-N", str(hosts), "--ntasks-per-node=1", "-t", "00:20:00", "-J", f"comm{hosts}",
           "-o", str(work / f"comm-{hosts}hosts.log"), "--wrap", inner]
    sh(cmd, env=slurm_env(), timeout=1500)
    if not out.exists():
        raise SystemExit(f"the comm job on {hosts} hosts wrote no {out}: see {work / f'comm-{hosts}hosts.log'}")
    return out, shlex.join(cmd)


def job_script(work: Path, hosts: int) -> Path:
    """jobscripts/scaling_slurm.sh, changed only where its header tells a user to (as tests/cluster/jobs.py)."""
    text = (REPO / "jobscripts" / "scaling_slurm.sh").read_text()
    for pattern, replacement in [(r"#SBATCH -A \S+", "#SBATCH -A lab"), (r"#SBATCH -p \S+", "#SBATCH -p debug"),
                                 (r"#SBATCH -N \d+", f"#SBATCH -N {hosts}"),
                                 (r"#SBATCH --ntasks-per-node=\d+", "#SBATCH --ntasks-per-node=1"),
                                 (r"#SBATCH --gpus-per-node=\d+\n", ""), (r"#SBATCH -t \S+", "#SBATCH -t 01:00:00")]:
        text, count = re.subn(pattern, replacement, text)
        if count != 1:
            raise SystemExit(f"jobscripts/scaling_slurm.sh no longer has one line matching {pattern!r}")
    path = work / "scaling_slurm.sh"
    path.write_text(text)
    return path


def sweep(work: Path, study: Study, repeats: int) -> tuple[Path, str]:
    sweep_dir = work / f"sweep-{study.model}"
    variables = {"CONFIG": study.config, "PYTHON": sys.executable,
                 "NODES": ",".join(map(str, range(1, study.hosts + 1))),
                 "BATCH": str(study.batch), "EPOCHS": str(study.epochs), "REPEATS": str(repeats), "PREDICT": "0",
                 "SWEEP_DIR": str(sweep_dir), "HPC_MNIST_JOB_FILES": str(work / "jobfiles"),
                 "OVERRIDES": f"data.name=synthetic data.synthetic_train={study.train_samples} "
                              "train.precision=fp32 log.tensorboard=false"}
    cmd = ["sbatch", "-W", "-o", str(work / f"sweep-{study.model}.log"), str(job_script(work, study.hosts))]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**slurm_env(), **variables},
                            timeout=3600)
    if not (sweep_dir / "sweep.json").exists():
        raise SystemExit(f"the {study.model} sweep did not run ({result.returncode}): see "
                         f"{work / f'sweep-{study.model}.log'}\n{result.stderr[-2000:]}")
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items() if k not in ("PYTHON",))
    return sweep_dir, f"{shown} {shlex.join(cmd)}"


def report(sweep_dir: Path, comm_files: list[Path], out: Path) -> tuple[list[dict], list[dict], str, str]:
    cmd = [sys.executable, "-m", "hpc_mnist.scaling", "report", str(sweep_dir), "--out", str(out),
           *(f"--comm={p}" for p in comm_files)]
    sh(cmd, env={**os.environ, "COLUMNS": "200"})
    with open(out / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    with open(out / "model.csv") as f:
        line = list(csv.DictReader(f))
    note = next(p for p in (out / "scaling.md").read_text().split("\n\n") if p.startswith("Model fitted"))
    return rows, line, note, shlex.join(["python", *cmd[1:]])


def verdict(row: dict) -> str:
    if row["fit"] != "predicted":
        return "fit"
    median = float(row["samples_per_s"])
    spread = (float(row["samples_per_s_max"]) - float(row["samples_per_s_min"])) / median
    if spread > 2 * TOLERANCE:
        return f"unmeasurable (repeats spread {spread:.0%})"
    return "within 15%" if abs(float(row["model_error"])) <= TOLERANCE else "outside 15%"


def wait_idle() -> None:
    while Path("/tmp/hpc_mnist-BUSY").exists() or os.getloadavg()[0] > 0.8:
        print(f"waiting for an idle machine (load {os.getloadavg()[0]:.2f})", flush=True)
        time.sleep(30)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    import torch

    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "torch": torch.__version__, "host": platform.node()}


def allreduce_check(link: str, fitted_on: list[Path], largest: Path) -> dict:
    """The MLP's gradient all-reduce timed on the most hosts, beside what the ring fitted on fewer predicts."""
    network = ring.fit([read_sweep(p) for p in fitted_on])
    data = json.loads(largest.read_text())
    row = next(r for r in data["rows"] if r["what"] == "mlp gradients")
    predicted = network.allreduce_s(row["bytes"], data["ranks"]) * 1e6
    return {"link": link, "hosts": data["hosts"], "bytes": row["bytes"], "measured_us": row["time_us"],
            "predicted_us": predicted, "error": predicted / row["time_us"] - 1,
            "sentence": f"the MLP's {row['bytes']:,}-byte all-reduce alone on {data['hosts']} hosts: "
                        f"{row['time_us'] / 1e3:.1f} ms measured, {predicted / 1e3:.1f} ms by the ring fitted on 2 "
                        f"and 3 hosts ({predicted / row['time_us'] - 1:+.0%})"}


def markdown(record: dict) -> str:
    lines = ["# Scaling prediction on the lab: fitted on small runs, checked on larger ones", "",
             f"Measured {record['date']} on {record['machine']['cpu']} ({record['machine']['cores']} cores, shared by "
             f"every lab host), torch {record['machine']['torch']}, gloo over TCP; the Slurm lab with "
             f"{record['hosts']} hosts, one rank and one thread per host, each host's link shaped both ways with tc "
             f"tbf to {', '.join(record['links'])}. Command: `{record['command']}`.", "",
             "The model (hpc_mnist/scaling/fitted.py) is fitted on the 1-host point, `hpc-mnist comm` sweeps on 2 and "
             "3 hosts and the overlap measured at the comm sweeps' host counts; every other point is a prediction, "
             f"passing within {TOLERANCE:.0%} of the measured median of {record['repeats']} repeats.", ""]
    for study in record["studies"]:
        lines += [f"## {study['model'].upper()} (batch {study['batch']} per rank, {study['epochs']} epoch(s) of "
                  f"{study['train_samples'] * 4 // 5:,} synthetic digits)", "",
                  "| link | hosts | measured samples/s (median) | range of repeats | predicted | error | "
                  "fit or predicted | regime | comm share | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for result in study["results"]:
            for r in result["rows"]:
                low, high, mid = (float(r[k]) for k in ("samples_per_s_min", "samples_per_s_max", "samples_per_s"))
                lines.append(f"| {result['link']} | {r['nodes']} | {mid:,.0f} | {low:,.0f}-{high:,.0f} "
                             f"({(high - low) / mid:.0%}) | {float(r['predicted_samples_per_s']):,.0f} | "
                             f"{float(r['model_error']):+.1%} | {r['fit']} | {r['regime']} | "
                             f"{float(r['comm_share']):.2f} | {r['verdict']} |")
        lines.append("")
        for result in study["results"]:
            lines += [f"{result['link']}: {result['note']}", "", f"Report: `{result['report_command']}`", "",
                      f"![{study['model']} at {result['link']}](../docs/scaling-prediction-{study['model']}-"
                      f"{result['link']}.png)", ""]
    if record.get("checks"):
        lines += ["## The all-reduce alone on the most hosts (not fitted on)", "",
                  *(f"- {c['link']}: {c['sentence']}." for c in record["checks"]), ""]
    lines += ["## What a shaped link models", "",
              "Bandwidth: each host's NIC sends and receives at the set rate, and the switch (the bridge) is not "
              "the limit. Not modelled: a switch's latency and its contention, NIC offload and RDMA (the hosts' "
              "kernel moves every byte over TCP), NCCL's algorithms and protocols (gloo runs a ring over TCP here), "
              "and compute: every host shares this machine's 2 cores, so a model whose compute is a large share of "
              "the step is measured against ranks that slow each other.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--links", default="100mbit,400mbit", help="link speeds, tc rates (default: 100mbit,400mbit)")
    p.add_argument("--hosts", type=int, default=6, help="the MLP's largest sweep size, 4 to 6 (default: 6)")
    p.add_argument("--repeats", type=int, default=3, help="runs per size (default: 3)")
    p.add_argument("--models", default="mlp,cnn", help="which studies (default: mlp,cnn)")
    p.add_argument("--wait-idle", action="store_true", help="wait for a quiet machine, hold /tmp/hpc_mnist-MEASURING")
    p.add_argument("--append", action="store_true", help="add these links to the day's record (default: a new one)")
    p.add_argument("--keep", action="store_true", help="keep the runs' folder under the lab's shared folder")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the lab needs root: sudo python benchmarks/scaling_prediction.py")
    today = datetime.date.today().isoformat()
    links = [s.strip() for s in args.links.split(",") if s.strip()]
    chosen = [s for s in studies(args.hosts) if s.model in args.models.split(",")]
    work = LAB_DIR / "shared" / f"scaling-prediction-{today}"
    keep = REPO / "benchmarks" / f"scaling-prediction-{today}"
    command = shlex.join(["python", "benchmarks/scaling_prediction.py", *sys.argv[1:]])
    record = {"date": today, "machine": machine(), "hosts": args.hosts, "links": links, "repeats": args.repeats,
              "tolerance": TOLERANCE, "command": command,
              "studies": [{**asdict(s), "results": []} for s in chosen]}
    record_path = REPO / "benchmarks" / f"scaling-prediction-{today}.json"
    if args.append and record_path.exists():  # the day's earlier links stay; these are measured (again)
        earlier = json.loads(record_path.read_text())
        record["links"] = [*(x for x in earlier["links"] if x not in links), *links]
        record["command"] = f"{earlier['command']}; {command}"
        record["checks"] = earlier.get("checks", [])
        for study in record["studies"]:
            old = next((s for s in earlier["studies"] if s["model"] == study["model"]), {"results": []})
            study["results"] = [r for r in old["results"] if r["link"] not in links]
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # not inherited by the lab's daemons: Python's files are not
        try:
            for link in links:
                if args.wait_idle:
                    wait_idle()
                    Path("/tmp/hpc_mnist-MEASURING").touch()
                lab("up", args.hosts, link)
                here = work / link
                here.mkdir(parents=True, exist_ok=True)
                print(f"[{link}] comm sweeps on {', '.join(map(str, COMM_HOSTS))} hosts", flush=True)
                comms = {n: comm(here, n) for n in (*COMM_HOSTS, args.hosts)}
                record["checks"] = [c for c in record.get("checks", []) if c["link"] != link]
                record["checks"].append(allreduce_check(link, [comms[n][0] for n in COMM_HOSTS],
                                                        comms[args.hosts][0]))
                print(f"[{link}] {record['checks'][-1]['sentence']}", flush=True)
                for study, entry in zip(chosen, record["studies"], strict=True):
                    print(f"[{link}] {study.model} on 1..{study.hosts} hosts x {args.repeats}", flush=True)
                    sweep_dir, sweep_cmd = sweep(here, study, args.repeats)
                    out = keep / f"{study.model}-{link}"
                    rows, line, note, report_cmd = report(sweep_dir, [comms[n][0] for n in study.fit_hosts], out)
                    for r in rows:
                        r["verdict"] = verdict(r)
                    figure = REPO / "docs" / f"scaling-prediction-{study.model}-{link}.png"
                    shutil.copy(out / "scaling.png", figure)
                    for png in out.glob("*.png"):  # the figure lives in docs/; the tables stay here
                        png.unlink()
                    entry["results"] = [r for r in entry["results"] if r["link"] != link]
                    entry["results"].append({"link": link, "rows": rows, "line": line, "note": note,
                                             "comm_commands": [comms[n][1] for n in study.fit_hosts],
                                             "sweep_command": sweep_cmd, "report_command": report_cmd,
                                             "comm": [json.loads(comms[n][0].read_text())["rows"]
                                                      for n in study.fit_hosts]})
                    for r in rows:
                        print(f"  {r['nodes']} hosts: {float(r['samples_per_s']):,.0f} samples/s measured, "
                              f"{float(r['predicted_samples_per_s']):,.0f} predicted ({float(r['model_error']):+.1%}), "
                              f"{r['fit']}, {r['regime']}-bound, {r['verdict']}", flush=True)
                Path("/tmp/hpc_mnist-MEASURING").unlink(missing_ok=True)
        finally:
            Path("/tmp/hpc_mnist-MEASURING").unlink(missing_ok=True)
            lab("down")
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    (REPO / "benchmarks" / "scaling-prediction.md").write_text(markdown(record))
    predicted = [r for s in record["studies"] for res in s["results"] for r in res["rows"] if r["fit"] == "predicted"]
    failed = [r for r in predicted if r["verdict"] == "outside 15%"]
    print(f"{len(predicted) - len(failed)} of {len(predicted)} predictions within 15% or unmeasurable; written "
          f"benchmarks/scaling-prediction-{today}.json, benchmarks/scaling-prediction.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
