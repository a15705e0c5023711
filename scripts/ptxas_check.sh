#!/usr/bin/env bash
# Register and spill table of every CUDA kernel, from ptxas (nvcc --resource-usage), for
# sm_80 and sm_90; fails on any register spill the sources do not accept.
#
#   scripts/ptxas_check.sh              every csrc/cuda/*.cu (a few minutes per file)
#   scripts/ptxas_check.sh FILE.cu ...  just these
#
# Flags and include folders are those of the real build (setup.py through torch's
# cpp_extension: -O3, torch's nvcc defines, torch's and site-packages/nvidia/*/include).
# A spill is accepted only where a comment in csrc/cuda names the kernel:
#     // ptxas-spill-ok: KERNEL_NAME: why the spill is acceptable
# (KERNEL_NAME: the function's name, without namespace or template arguments).
# Environment: PYTHON (default .venv/bin/python, else python3), NVCC (default
# $CUDA_HOME/bin/nvcc or /usr/local/cuda/bin/nvcc), PTXAS_ARCHS (default "80 90"),
# PTXAS_OUT (folder for the raw logs and the table; default build/ptxas), PTXAS_REUSE_LOGS=1
# (parse the logs already in PTXAS_OUT instead of compiling again).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
NVCC=${NVCC:-${CUDA_HOME:-/usr/local/cuda}/bin/nvcc}
ARCHS=${PTXAS_ARCHS:-80 90}
OUT=${PTXAS_OUT:-build/ptxas}
[ -x "$NVCC" ] || { echo "ptxas_check: no nvcc at $NVCC (set NVCC or CUDA_HOME)" >&2; exit 2; }
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}  # torch's include_paths reads it
mkdir -p "$OUT"

# torch's own nvcc flags and include folders, as cpp_extension passes them.
mapfile -t FLAGS < <("$PYTHON" - <<'PY'
import glob, os, sysconfig
import torch
import torch.utils.cpp_extension as ce
try:
    inc = ce.include_paths(device_type="cuda")
except TypeError:  # torch < 2.6
    inc = ce.include_paths(cuda=True)
site = os.path.dirname(os.path.dirname(torch.__file__))
inc += sorted(d for d in glob.glob(os.path.join(site, "nvidia", "*", "include")) if os.path.isdir(d))
inc.append(sysconfig.get_paths()["include"])
flags = [f"-I{d}" for d in inc] + ["-Icsrc"]
flags += list(ce.COMMON_NVCC_FLAGS) + ["-std=c++20", "-O3", "-lineinfo", "-Xcompiler", "-fPIC",
                                       "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
print("\n".join(flags))
PY
)

gencode=()
for a in $ARCHS; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done

files=("$@")
[ ${#files[@]} -gt 0 ] || files=(csrc/cuda/*.cu)
# One nvcc per file, MAX_JOBS (default 2) side by side: each is single-threaded.
compile_one() {
  local f=$1 name
  name=$(basename "$f" .cu)
  echo "ptxas_check: $f" >&2
  "$NVCC" -c "$f" -o "$OUT/$name.o" "${FLAGS[@]}" "${gencode[@]}" --resource-usage \
    > "$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log" >&2; return 1; }
}
rm -f "$OUT/.failed"
for f in "${files[@]}"; do
  # PTXAS_REUSE_LOGS=1: parse the logs of an earlier run again (after editing a comment)
  [ "${PTXAS_REUSE_LOGS:-0}" = 1 ] && [ -s "$OUT/$(basename "$f" .cu).log" ] && continue
  while [ "$(jobs -rp | wc -l)" -ge "${MAX_JOBS:-2}" ]; do sleep 1; done
  { compile_one "$f" || touch "$OUT/.failed"; } &
done
wait
[ ! -e "$OUT/.failed" ] || exit 1

# Parse the logs: one row per (kernel, arch).
"$PYTHON" - "$OUT" "${files[@]}" <<'PY'
import os, re, subprocess, sys

out, files = sys.argv[1], sys.argv[2:]
entry = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
spill = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
used = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
rows, cur = [], None
for f in files:
    log = open(os.path.join(out, os.path.basename(f)[:-3] + ".log")).read().splitlines()
    for line in log:
        m = entry.search(line)
        if m:
            cur = {"file": os.path.basename(f), "mangled": m.group(1), "arch": m.group(2),
                   "regs": 0, "stores": 0, "loads": 0, "smem": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = spill.search(line)
        if m:
            cur["stores"], cur["loads"] = int(m.group(1)), int(m.group(2))
        m = used.search(line)
        if m:
            cur["regs"] = int(m.group(1))
            cur["smem"] = int(m.group(2) or 0)
if not rows:
    sys.exit("ptxas_check: no kernels found in the ptxas output")
names = subprocess.run(["c++filt"], input="\n".join(r["mangled"] for r in rows),
                       capture_output=True, text=True, check=True).stdout.splitlines()


def base_name(demangled):
    """chunk_kernel from 'void centerloss::cuda::(anonymous namespace)::chunk_kernel<...>(...)'."""
    name = demangled.replace("(anonymous namespace)::", "")
    cut = min([i for i in (name.find("<"), name.find("(")) if i >= 0] or [len(name)])
    return name[:cut].split()[-1].split("::")[-1]


sources = "".join(open(os.path.join("csrc", "cuda", n)).read()
                  for n in sorted(os.listdir(os.path.join("csrc", "cuda"))))
accepted = set(re.findall(r"ptxas-spill-ok:\s*(\w+)", sources))
for r, name in zip(rows, names):
    r["name"], r["short"] = base_name(name), name.replace("centerloss::cuda::", "")
    r["short"] = r["short"].replace("(anonymous namespace)::", "")
    r["short"] = re.sub(r"\(.*\)$", "", r["short"]).removeprefix("void ")

width = min(max(len(r["short"]) for r in rows), 110)
header = f"{'kernel':<{width}}  {'arch':<6} {'regs':>4} {'spill st':>8} {'spill ld':>8} {'smem':>6}"
lines = [header, "-" * len(header)]
bad = []
for r in sorted(rows, key=lambda r: (r["file"], r["short"], r["arch"])):
    short = r["short"] if len(r["short"]) <= width else r["short"][:width - 3] + "..."
    lines.append(f"{short:<{width}}  {r['arch']:<6} {r['regs']:>4} {r['stores']:>8} "
                 f"{r['loads']:>8} {r['smem']:>6}")
    if (r["stores"] or r["loads"]) and r["name"] not in accepted:
        bad.append(f"{r['short']} ({r['arch']}): {r['stores']} bytes spill stores, "
                   f"{r['loads']} bytes spill loads")
table = "\n".join(lines)
print(table)
open(os.path.join(out, "table.txt"), "w").write(table + "\n")
if bad:
    print("\nptxas_check: register spills no comment accepts "
          "(add '// ptxas-spill-ok: NAME: why' next to the kernel, or fix it):", file=sys.stderr)
    print("\n".join("  " + b for b in bad), file=sys.stderr)
    sys.exit(1)
print(f"\nptxas_check: {len(rows)} kernels x archs, no unaccepted spill")
PY
