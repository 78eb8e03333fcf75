#!/bin/sh
# Run the project's Python as on an AMD EPYC without AVX-512 or AMX (QEMU's EPYC-Rome model:
# AVX2 and FMA), to check that what dispatches on the CPU (the patch kernel's variants, ONNX
# Runtime's and OpenVINO's kernels, the CPU engine choice) works there.
#
#   tools/avx2_persona.sh -m pytest -q tests/test_kernel.py
#
# Every Python process the command starts through sys.executable (test subprocesses, decode
# workers, `python -m nsnet_sdk.cli`) runs under the same emulated CPU: the interpreter is entered
# through .venv/bin/python-avx2, which the emulator reports as sys.executable. /proc/cpuinfo is
# replaced, in a private mount namespace, by this machine's with the AVX-512 and AMX flags and the
# model name taken out. Other binaries (Ray's raylet, Chromium) run natively.
#
# Needs Debian's qemu-user (qemu-x86_64 7.2 or newer: AVX2 under TCG) and util-linux's unshare
# (root, or unprivileged user namespaces). Emulation is 10-50x slower: results count, timings do not.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
command -v qemu-x86_64 >/dev/null || { echo "avx2_persona: qemu-x86_64 not found (apt-get install qemu-user)" >&2; exit 2; }
[ "$(uname -m)" = x86_64 ] || { echo "avx2_persona: x86-64 hosts only" >&2; exit 2; }
REAL=$(readlink -f "$VENV/bin/python")
# Features the EPYC-Rome model names that TCG lacks: dropped here so QEMU does not warn at every
# process start (tests read stderr).
CPU=EPYC-Rome,-rdseed,-sha-ni,-rdpid,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-perfctr-core,-clzero,-xsaveerptr,-wbnoinvd,-ibpb,-amd-stibp,-nrip-save,-xsavec,-xsaves
WRAP=$VENV/bin/python-avx2
printf '#!/bin/sh\nexec qemu-x86_64 -cpu %s -0 "$0" %s "$@"\n' "$CPU" "$REAL" > "$WRAP"
chmod +x "$WRAP"
FAKE=$(mktemp)
trap 'rm -f "$FAKE"' EXIT
sed -E -e '/^flags/{s/ (avx512[a-z0-9_]*|amx[a-z0-9_]*|avx_vnni[a-z0-9_]*|avx_ifma|avx_ne_convert|vaes|vpclmulqdq|gfni)\b//g}' \
       -e 's/^(model name[^:]*: ).*/\1AMD EPYC-Rome Processor (QEMU TCG)/' /proc/cpuinfo > "$FAKE"
US=""
[ "$(id -u)" = 0 ] || US="-r"
unshare $US -m sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' sh "$FAKE" "$WRAP" "$@"
