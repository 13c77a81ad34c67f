#!/usr/bin/env bash
# Install an llm-fleet offline bundle (built by `fleet bundle`) into a prefix,
# on a host with no package registry. Checks every part and the joined
# archive against SHA256SUMS and the host's Python packages against the
# bundle's host-requirements.txt before it changes anything.
#
# Usage: install.sh [--prefix DIR] [--parts DIR]
#   --prefix  where to install (default /opt/llm-fleet)
#   --parts   the folder holding part-NNN, SHA256SUMS and manifest.json
#             (default: the folder of this script)
# Afterwards: `source PREFIX/env.sh`, then `fleet doctor` and `fleet up`.
set -euo pipefail

prefix=/opt/llm-fleet
parts=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a folder}"; shift ;;
    --parts) parts="${2:?--parts needs a folder}"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1" >&2
       echo "hint: install.sh [--prefix DIR] [--parts DIR]" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '[install] %s\n' "$*" >&2; }
fail() { echo "error: $1" >&2; echo "hint: $2" >&2; exit "${3:-1}"; }

[ -f "$parts/SHA256SUMS" ] || fail "no SHA256SUMS in $parts" \
  "pass --parts with the folder holding the bundle's part-NNN files and SHA256SUMS" 2
command -v sha256sum >/dev/null || fail "sha256sum is missing" "install coreutils" 3
command -v dpkg >/dev/null || fail "dpkg is missing (Debian packages are unpacked with dpkg -x)" \
  "install dpkg, or use a Debian or Ubuntu host" 3
"$python" -m pip --version >/dev/null 2>&1 || fail "$python has no pip" \
  "install pip for $python, or set PYTHON to an interpreter that has it" 3

say "checking $(grep -c ' part-' "$parts/SHA256SUMS") parts"
if ! (cd "$parts" && grep ' part-' SHA256SUMS | sha256sum -c --quiet -); then
  fail "a part is missing or damaged (see the FAILED lines above)" \
    "copy those part-NNN files again from the bundle" 4
fi

mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
incoming="$prefix/.incoming"
rm -rf "$incoming"
mkdir -p "$incoming/tree"
trap 'rm -rf "$incoming"' EXIT
cat "$parts"/part-[0-9][0-9][0-9] > "$incoming/bundle.tar"
if ! (cd "$incoming" && grep ' bundle.tar$' "$parts/SHA256SUMS" | sha256sum -c --quiet -); then
  fail "the joined parts do not make the archive the manifest names" \
    "the parts come from different bundles; copy one bundle whole" 4
fi
tar -xf "$incoming/bundle.tar" -C "$incoming/tree"
rm -f "$incoming/bundle.tar"
tree="$incoming/tree"

say "checking what the host must already have ($tree/host-requirements.txt)"
"$python" - "$tree/host-requirements.txt" <<'PY' || exit 5
import platform, sys
from importlib.metadata import PackageNotFoundError, version

problems = []
for line in open(sys.argv[1], encoding="utf-8"):
    fields = line.split("#", 1)[0].split()
    if not fields:
        continue
    name, wanted = fields[0], (fields[1] if len(fields) > 1 else "")
    if name == "python":
        have = platform.python_version()
    else:
        try:
            have = version(name)
        except PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
    if not have.startswith(wanted):
        problems.append(f"{name} is {have}, the bundle was built for {wanted}")
for problem in problems:
    print(f"error: {problem}", file=sys.stderr)
if problems:
    print("hint: build a bundle for this host's versions (deploy/bundle/*.txt and *.host), "
          "or install those packages first", file=sys.stderr)
    sys.exit(1)
PY

say "installing $(ls "$tree/wheels" | wc -l) wheels into $prefix/site"
rm -rf "$prefix/site.new"
if ! "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$prefix/site.new" "$tree"/wheels/*.whl > "$incoming/pip.log" 2>&1; then
  tail -n 20 "$incoming/pip.log" >&2
  fail "pip could not install the bundle's wheels" "see the lines above" 6
fi
rm -rf "$prefix/site" && mv "$prefix/site.new" "$prefix/site"

say "unpacking $(ls "$tree/debs" | wc -l) Debian packages into $prefix/root"
rm -rf "$prefix/root" && mkdir -p "$prefix/root"
for deb in "$tree"/debs/*.deb; do
  dpkg -x "$deb" "$prefix/root"
done

rm -rf "$prefix/llm-fleet" && mv "$tree/llm-fleet" "$prefix/llm-fleet"
if [ -d "$tree/cache" ]; then
  mkdir -p "$prefix/cache"
  cp -a "$tree/cache/." "$prefix/cache/"
fi
cp "$parts/manifest.json" "$prefix/manifest.json" 2>/dev/null || true

mkdir -p "$prefix/bin"
cat > "$prefix/env.sh" <<ENV
# llm-fleet, installed from an offline bundle: source this file.
export PATH="$prefix/bin:$prefix/root/usr/sbin:$prefix/root/usr/bin:\$PATH"
export PYTHONPATH="$prefix/llm-fleet:$prefix/site\${PYTHONPATH:+:\$PYTHONPATH}"
# Prepared models (and vLLM's compile cache) live in the prefix.
export XDG_CACHE_HOME="$prefix/cache"
# The bundle carries no FlashInfer: vLLM's native top-k/top-p sampler instead.
export VLLM_USE_FLASHINFER_SAMPLER=0
ENV
cat > "$prefix/bin/fleet" <<FLEET
#!/bin/sh
. "$prefix/env.sh"
exec "$python" -m router.cli "\$@"
FLEET
chmod +x "$prefix/bin/fleet"
if [ -x "$prefix/root/usr/sbin/logrotate" ]; then
  # logrotate with the library a GPU host may lack (libpopt, also in the
  # bundle); the rest of the host's programs keep the host's libraries.
  cat > "$prefix/bin/logrotate" <<ROTATE
#!/bin/sh
LD_LIBRARY_PATH="$prefix/root/usr/lib/x86_64-linux-gnu:$prefix/root/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  exec "$prefix/root/usr/sbin/logrotate" "\$@"
ROTATE
  chmod +x "$prefix/bin/logrotate"
fi

say "checking the installed programs"
(
  . "$prefix/env.sh"
  "$prefix/bin/fleet" --version
  for program in nginx prometheus promtool prometheus-nginx-exporter mtail logrotate; do
    command -v "$program" >/dev/null || fail "$program is not in the bundle" \
      "rebuild the bundle with fleet bundle; its Debian packages were incomplete" 7
  done
) >&2
say "installed into $prefix; run: source $prefix/env.sh && fleet doctor"
