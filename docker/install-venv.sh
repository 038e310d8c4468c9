#!/bin/sh
# The image's install steps, in one place: the Dockerfile's build stage runs this script, and
# tests/test_image.py runs it in a clean venv (no container engine needed) to show the steps work.
#
#   docker/install-venv.sh VENV [SOURCE]
#
# VENV gets the locked dependencies (requirements.lock, hashes checked, wheels only, so no compiler
# is needed) and batchrun from SOURCE (default: the current directory); then what a run never loads
# is removed: pip and setuptools, pyarrow's tests, headers, Cython sources and the extension modules
# of formats and filesystems batchrun does not use, debug symbols.
#
# Bytecode is compiled only for the modules a run imports (one --limit run on the built-in
# simulator, plus gcsfs), so start-up stays fast without the bytecode of every installed module.
set -eu
venv=$1
source=$(cd "${2:-.}" && pwd)

"${PYTHON:-python3}" -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check"
$pip install --no-compile --require-hashes --only-binary :all: --no-deps -r "$source/requirements.lock"
$pip install --no-compile --no-deps "$source"
$pip uninstall --yes --quiet pip setuptools

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
arrow="$site/pyarrow"
rm -rf "$arrow/tests" "$arrow/include" "$arrow/includes" "$arrow/src" "$arrow"/*.pyx "$arrow"/*.pxd "$arrow"/*.pxi \
  "$arrow"/*flight* "$arrow"/libarrow_s3.so* "$arrow"/_s3fs.* "$arrow"/_pyarrow_cpp_tests.* \
  "$arrow"/_orc.* "$arrow"/_dataset_orc.* "$arrow"/orc.py "$arrow"/_hdfs.* "$arrow"/_azurefs.* "$arrow"/_gcsfs.* \
  "$arrow"/_substrait.* "$arrow"/substrait.py "$arrow"/_cuda.* "$arrow"/cuda.py
# A wheel cannot hold symlinks, so pyarrow ships each of its Python libraries three times: keep one.
for library in "$arrow"/libarrow_python*.so.*.*.*; do
  [ -f "$library" ] || continue
  short=${library%.*.*}
  for copy in "${library%.*.*.*}" "$short"; do
    [ "$copy" = "$library" ] || ln -sf "$(basename "$library")" "$copy"
  done
done
if command -v strip >/dev/null; then
  find "$site" -name '*.so*' -type f -exec strip --strip-unneeded {} +
fi

unset PYTHONDONTWRITEBYTECODE  # the warm-up below is what writes the bytecode
warm=$(mktemp -d)
cp -r "$source/jobs" "$source/sample_data" "$warm/"
(cd "$warm" && "$venv/bin/batchrun" run jobs/reviews-sentiment.yaml --limit 2 >/dev/null 2>&1 \
  && "$venv/bin/python" -c 'import gcsfs, batchrun.commands.status, batchrun.commands.report, batchrun.commands.export')
rm -rf "$warm"
