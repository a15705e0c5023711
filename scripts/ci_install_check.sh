#!/usr/bin/env bash
# What a new user does, from a clean clone of this repository, with no flags (issues 11, 13):
#   (c) no torch: `pip install .` stops within seconds, saying to install torch first
#   (a) `pip install torch==<pin>`, then `pip install .`: imports from outside the source
#       tree, a tiny forward/backward, torch's version and files untouched
#   (d) from the clone folder after that install: the benchmark's quick mode says which
#       group it needs (one line, exit 2), then runs after `pip install ".[bench]"`
#   (e) `pip wheel .`: the wheel installs and passes the same checks
#   (b) `pip install -e .`: the same checks, importing the clone
# Every build is CPU-only (CENTERLOSS_CPU_ONLY=1) to keep CI time down: this checks the
# packaging; the CUDA kernels' compile is checked by .ci/run's own build. Each step's time
# is printed and summed up at the end. torch comes from the local wheel pip picks (the pin
# in requirements.txt), into a fresh virtual environment.
#   scripts/ci_install_check.sh [WORK_DIR]     (default: a temporary folder, removed after)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
torch_pin=$(sed -n 's/^torch==\([^ ;#]*\).*/\1/p' "$repo/requirements.txt")
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
export CENTERLOSS_CPU_ONLY=1 MAX_JOBS=${MAX_JOBS:-2} PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHONPATH CENTERLOSS_TORCH_PYTHON VIRTUAL_ENV CONDA_PREFIX FORCE_CUDA || true

summary=()
t0=0
step() { t0=$(date +%s); echo; echo "--- $*"; }
done_step() { local s=$(( $(date +%s) - t0 )); summary+=("$(printf '%5d s  %s' "$s" "$1")"); echo "    ($s s)"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# A tiny forward/backward from outside the source tree, against the plain-PyTorch reference;
# prints where centerloss_ext was imported from.
smoke() {  # python expected_folder
  (cd "$work" && "$1" - "$2" <<'EOF'
import os, sys, warnings
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # numpy is optional
import torch
import centerloss_ext
from centerloss_ext import reference
where = os.path.dirname(os.path.realpath(centerloss_ext.__file__))
assert where == os.path.realpath(sys.argv[1]), (where, sys.argv[1])
torch.manual_seed(0)
x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
y = torch.tensor([0, 1, 2, 0, 1, 3])
crit, ref = centerloss_ext.CenterLoss(4, 3, dtype=torch.float64), reference.CenterLoss(4, 3, dtype=torch.float64)
ref.load_state_dict(crit.state_dict())
x2 = x.detach().clone().requires_grad_(True)
loss, loss_ref = crit(x, y), ref(x2, y)
loss.backward(); loss_ref.backward()
torch.testing.assert_close(loss, loss_ref)
torch.testing.assert_close(x.grad, x2.grad)
print(f"    import OK from {where}: loss {loss.item():.6f}, torch {torch.__version__}")
EOF
  )
}
torch_facts() {  # python -> version and the folder torch lives in
  "$1" -c 'import importlib.metadata as m, os; d = m.distribution("torch"); print(d.version, os.path.realpath(d.locate_file("torch")))'
}

step "clean clone of $(git -C "$repo" rev-parse --short HEAD)"
git clone -q "$repo" "$work/clone"
done_step "clean clone"

step "(c) no torch: pip install . must stop at once"
"$python" -m venv "$work/venv-no-torch"
start=$(date +%s)
# another environment with torch activated must not be picked up instead (VIRTUAL_ENV)
if (cd "$work/clone" && VIRTUAL_ENV="$repo/.venv" "$work/venv-no-torch/bin/pip" install . \
      > "$work/no-torch.log" 2>&1); then
  cat "$work/no-torch.log"; fail "(c) pip install . succeeded without torch"
fi
took=$(( $(date +%s) - start ))
grep -q "no PyTorch found to build against. Install torch first" "$work/no-torch.log" ||
  { cat "$work/no-torch.log"; fail "(c) the install-torch-first message is missing"; }
grep -q "$work/venv-no-torch" "$work/no-torch.log" ||
  { cat "$work/no-torch.log"; fail "(c) the message does not name the environment"; }
! grep -q "building 'centerloss_ext._C'" "$work/no-torch.log" || fail "(c) it compiled"
! "$work/venv-no-torch/bin/python" -c 'import importlib.metadata as m; m.version("torch")' \
  2>/dev/null || fail "(c) torch got installed"
[ "$took" -lt 120 ] || fail "(c) took $took s: that is a build, not a fast failure"
grep "no PyTorch found" "$work/no-torch.log" | sed 's/^ */    /'
echo "    failed as it should, in $took s"
done_step "(c) no torch: pip install . fails fast"

step "(a) fresh venv: pip install torch==$torch_pin"
"$python" -m venv "$work/venv"
py=$work/venv/bin/python
"$py" -m pip install -q "torch==$torch_pin" > "$work/torch.log" 2>&1 ||
  { tail -40 "$work/torch.log"; fail "(a) pip install torch==$torch_pin failed"; }
torch_before=$(torch_facts "$py")
echo "    $torch_before"
done_step "(a) venv + pip install torch==$torch_pin"

step "(a) pip install .  (no flags)"
(cd "$work/clone" && "$py" -m pip install -v . > "$work/install.log" 2>&1) ||
  { tail -40 "$work/install.log"; fail "(a) pip install . failed"; }
grep -m1 "building against torch" "$work/install.log" | sed 's/^ */    /'
done_step "(a) pip install ."
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
smoke "$py" "$site/centerloss_ext"
[ "$(torch_facts "$py")" = "$torch_before" ] || fail "(a) torch changed: $(torch_facts "$py")"
echo "    torch unchanged"

step "(d) from the clone folder: python bench/compare.py --quick, without the bench group"
set +e
(cd "$work/clone" && "$py" bench/compare.py --quick --out "$work/bench" > "$work/bench0.log" 2>&1)
rc=$?
set -e
cat "$work/bench0.log" | sed 's/^/    /'
[ "$rc" = 2 ] && [ "$(wc -l < "$work/bench0.log")" = 1 ] &&
  grep -q 'pip install ".\[bench\]"' "$work/bench0.log" || fail "(d) expected one line naming the group"
[ ! -e "$work/bench" ] || fail "(d) it started working before saying what is missing"
done_step "(d) missing group: one line"

step "(d) pip install \".[bench]\" (in the clone folder: a rebuild, then tqdm and matplotlib)"
(cd "$work/clone" && "$py" -m pip install -q ".[bench]" > "$work/install-bench.log" 2>&1) ||
  { tail -40 "$work/install-bench.log"; fail "(d) pip install .[bench] failed"; }
[ "$(torch_facts "$py")" = "$torch_before" ] || fail "(d) torch changed"
done_step "(d) pip install .[bench]"

step "(d) from the clone folder: python bench/compare.py --quick"
(cd "$work/clone" && "$py" bench/compare.py --quick --out "$work/bench" > "$work/bench.log" 2>&1) ||
  { tail -40 "$work/bench.log"; fail "(d) the quick benchmark failed"; }
"$py" - "$work/bench/compare.json" "$site/centerloss_ext" <<'EOF'
import json, os, sys
facts = json.load(open(sys.argv[1]))["machine"]["centerloss_ext"]
where = os.path.dirname(os.path.realpath(facts["location"]))
assert where == os.path.realpath(sys.argv[2]), where
print(f"    benchmark used the installed copy: {where}")
EOF
done_step "(d) bench/compare.py --quick from the clone folder"

step "(e) pip wheel .  (no flags), then that wheel installed"
(cd "$work/clone" && "$py" -m pip wheel -v --no-deps -w "$work/wheel" . > "$work/wheel.log" 2>&1) ||
  { tail -40 "$work/wheel.log"; fail "(e) pip wheel . failed"; }
grep -m1 "building against torch" "$work/wheel.log" | sed 's/^ */    /'
"$py" -m pip install -q --no-deps --force-reinstall "$work"/wheel/centerloss_ext-*.whl
done_step "(e) pip wheel ., pip install the wheel"
smoke "$py" "$site/centerloss_ext"
[ "$(torch_facts "$py")" = "$torch_before" ] || fail "(e) torch changed"
echo "    torch unchanged"

step "(b) pip install -e .  (no flags)"
"$py" -m pip uninstall -q -y centerloss_ext
(cd "$work/clone" && "$py" -m pip install -v -e . > "$work/editable.log" 2>&1) ||
  { tail -40 "$work/editable.log"; fail "(b) pip install -e . failed"; }
grep -m1 "building against torch" "$work/editable.log" | sed 's/^ */    /'
done_step "(b) pip install -e ."
smoke "$py" "$work/clone/centerloss_ext"
[ "$(torch_facts "$py")" = "$torch_before" ] || fail "(b) torch changed"
echo "    torch unchanged"

echo
echo "install checks passed (CPU-only builds, MAX_JOBS=$MAX_JOBS):"
printf '  %s\n' "${summary[@]}"
