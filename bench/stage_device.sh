#!/usr/bin/env bash
# Stages what the GPU acceptance run needs on a lent device machine, in as few calls as the 64 MiB a
# call carries allow (4: bench/RESULTS.md, "The GPU acceptance run"), and prints the calls to make.
#
#   bash bench/stage_device.sh        # here, from anywhere in the checkout; needs PyPI
#
# One tar of: the wheels the device image lacks for ray[tune], optuna and mlflow, at the versions
# installed here (resolved for Python 3.12 on x86-64, then every package the image already holds left
# out, per the device's package list, so nothing shadows the image's own numpy, sympy, pytest...);
# pytorch-fid without its dependencies (resolving them drags newer sympy and networkx in); and the FID
# weights this checkout uses. ../shared/tools/device-stage cuts it into .stage/accept-1..N (git-ignored).
# The last call unpacks it, installs the wheels into /tmp/site and ends with the harness's preflight,
# so a staging that went wrong says so before the run is spent on it.
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
kinds=${DEVICE_KINDS:-$top/../.library/device/KINDS.md}
stage_tool=${DEVICE_STAGE:-$top/../shared/tools/device-stage}
[[ -f $kinds ]] || { echo "stage_device: the device's package list $kinds is not here (set DEVICE_KINDS)" >&2; exit 2; }
[[ -x $stage_tool ]] || { echo "stage_device: $stage_tool is not here (set DEVICE_STAGE)" >&2; exit 2; }

version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
reqs=("ray[tune]==$(version ray)" "optuna==$(version optuna)" "mlflow==$(version mlflow)")
pfid="pytorch-fid==$(version pytorch-fid)"
weights=$(python3 -c "from orchestrator.metrics.inception import resolve_weights; print(resolve_weights())")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/gpu-stage/wheels"
plat=(--python-version 3.12 --implementation cp --only-binary=:all:)
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_31_x86_64 manylinux_2_34_x86_64; do plat+=(--platform "$p"); done
echo "stage_device: resolving ${reqs[*]} for Python 3.12 x86-64"
python3 -m pip install --dry-run --ignore-installed --quiet --report "$tmp/report.json" "${plat[@]}" \
  --target "$tmp/x" "${reqs[@]}" 2> >(grep -v "^WARNING" >&2) >/dev/null
python3 - "$tmp/report.json" "$kinds" > "$tmp/req.txt" <<'PY'
import json, re, sys
text = open(sys.argv[2]).read()
listed = re.search(r"Packages: (.*?)\.\s*$", text, re.M)
if not listed:
    sys.exit("stage_device: no 'Packages:' line in the device's package list")
have = {name.strip().lower() for name in listed.group(1).split(",")}
for item in json.load(open(sys.argv[1]))["install"]:
    name = item["metadata"]["name"].lower().replace("_", "-")
    if name not in have and not name.startswith("nvidia-"):
        print(f"{name}=={item['metadata']['version']}")
PY
echo "$pfid" >> "$tmp/req.txt"
python3 -m pip download --quiet --no-deps "${plat[@]}" -d "$tmp/gpu-stage/wheels" -r "$tmp/req.txt" \
  2> >(grep -v "^WARNING" >&2) >/dev/null
cp "$weights" "$tmp/gpu-stage/default_1.pt"
echo "stage_device: $(wc -l < "$tmp/req.txt") wheels, $(du -sm "$tmp/gpu-stage/wheels" | cut -f1) MB;" \
     "weights $(du -sm "$tmp/gpu-stage/default_1.pt" | cut -f1) MB ($weights)"
"$stage_tool" accept "$tmp/gpu-stage" > "$tmp/calls.txt"
source bench/staged.env  # the paths on the device, shared with bench/gpu_acceptance.sh
n=$(ls -d .stage/accept-* | wc -l)
install="python3 -m pip install -q --no-index --no-deps --no-compile --target $STAGED_SITE $STAGED_TREE/wheels/*.whl"
echo "stage_device: $n staging calls, then the run; make them back to back (a machine is given back about"
echo "30 s after a call returns, and a fresh one has nothing staged):"
for k in $(seq 1 "$n"); do
  cmd="mkdir -p $STAGE && mv .stage/accept-$k/* $STAGE/"
  ((k == n)) && cmd+=" && mkdir -p $STAGE/accept && cat $STAGE/accept.tar.part-* | tar -xf - -C $STAGE/accept && rm $STAGE/accept.tar.part-* && $install && bash bench/gpu_acceptance.sh --preflight"
  echo "  run(carry=[\".stage/accept-$k\"], timeout_s=300, command=\"$cmd\")"
done
echo "  run(timeout_s=420, command=\"bash bench/gpu_acceptance.sh\")   # 360 s at most; again at once for a second run"
du -cm .stage/accept-*/* | tail -1 | sed 's/^/stage_device: carried, MB: /'
