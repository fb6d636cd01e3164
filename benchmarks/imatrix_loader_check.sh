#!/usr/bin/env bash
# Does llama.cpp's own imatrix loader accept an imatrix file qeval wrote?
# Compiles common/imatrix-loader.cpp of the pinned llama-cpp-python sdist (the llama.cpp that
# llama-quantize --imatrix reads files with) against the installed libggml-base, loads FILE, and
# prints what it read (format, metadata, entries, mean of sums/counts per tensor), for comparison
# with qeval.quantize.imatrix.read_imatrix. Needs g++ and the package registry (pip download).
# Usage: benchmarks/imatrix_loader_check.sh $QEVAL_CACHE/imatrix/<key>.imatrix.gguf
set -euo pipefail
file=$(realpath "$1")
py=${PYTHON:-python}
ver=$("$py" -c "from qeval.quantize.converter import LLAMA_CPP_PYTHON as v; print(v)")
site=$("$py" -c "import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent.parent)")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$py" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$work"
tar xzf "$work"/llama_cpp_python-"$ver".tar.gz -C "$work" --wildcards '*/vendor/llama.cpp/common/imatrix-loader.*'
cp "$work"/llama_cpp_python-"$ver"/vendor/llama.cpp/common/imatrix-loader.* "$work"/
cat > "$work/common.h" <<'H'
#pragma once
#include <string>
static inline bool string_remove_suffix(std::string & s, const std::string & suf) {
    if (s.size() < suf.size() || s.compare(s.size() - suf.size(), suf.size(), suf) != 0) return false;
    s.resize(s.size() - suf.size()); return true;
}
H
printf '#pragma once\n#include <cstdio>\n#define LOG_ERR(...) fprintf(stderr, __VA_ARGS__)\n#define LOG_WRN LOG_ERR\n#define LOG_INF LOG_ERR\n' > "$work/log.h"
cat > "$work/main.cpp" <<'C'
#include "imatrix-loader.h"
#include <cstdio>
int main(int, char ** argv) {
    common_imatrix m;
    if (!common_imatrix_load(argv[1], m)) { printf("REJECTED by common_imatrix_load\n"); return 1; }
    printf("accepted: legacy=%d has_metadata=%d chunk_count=%d chunk_size=%d datasets=%zu entries=%zu\n",
           m.is_legacy, m.has_metadata, m.chunk_count, m.chunk_size, m.datasets.size(), m.entries.size());
    for (auto & [name, e] : m.entries) {  // what llama-quantize hands the quantizer: sums / counts
        double s = 0; for (float v : e.sums) s += v;
        printf("%s columns=%zu count=%lld mean=%.9g\n", name.c_str(), e.sums.size(), (long long) e.counts[0],
               s / e.counts[0] / e.sums.size());
    }
}
C
g++ -std=c++17 -O1 -I"$work" -I"$site/include" "$work/main.cpp" "$work/imatrix-loader.cpp" \
    -L"$site/llama_cpp/lib" -lggml-base -Wl,-rpath,"$site/llama_cpp/lib" -o "$work/loader"
"$work/loader" "$file"
