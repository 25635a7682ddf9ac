#!/usr/bin/env bash
# Every repository path that README.md and docs/*.md name must exist: a path is a word that
# starts with one of the repository's top-level folders (src/, dataplane/, docs/ ...) or is a
# top-level file, read up to the first character that cannot be part of a path. Placeholders
# (`<case>`, `*`, `...`), `../` paths (outside the repository) and paths .gitignore lists (what
# builds and runs leave, such as fuzz/artifacts/) are not checked.
set -euo pipefail
cd "$(dirname "$0")/.."
tops=$(git ls-files | cut -d/ -f1 | sort -u | grep -v '^\.' | tr '\n' '|' | sed 's/|$//')
missing=0
for doc in README.md docs/*.md; do
  # A candidate: preceded by a non-path character, made of path characters.
  grep -noE "(^|[^A-Za-z0-9_./-])(${tops})(/[A-Za-z0-9_.<>*/-]*)?" "$doc" | while IFS=: read -r line match; do
    path=$(printf '%s' "$match" | sed -E 's/^[^A-Za-z0-9_.]//; s/[.]+$//')
    case "$path" in
      *'<'* | *'*'* | *'...'*) continue ;;
    esac
    # A bare word equal to a top-level name without a slash (e.g. "control") is prose, not a path.
    case "$path" in */*) ;; *) [ -e "$path" ] && continue; continue ;; esac
    if [ ! -e "$path" ] && ! git check-ignore -q "$path"; then
      echo "$doc:$line: $path does not exist"
      echo x >>"${TMPDIR:-/tmp}/check-doc-paths.$$"
    fi
  done
done
if [ -s "${TMPDIR:-/tmp}/check-doc-paths.$$" ]; then
  rm -f "${TMPDIR:-/tmp}/check-doc-paths.$$"
  exit 1
fi
rm -f "${TMPDIR:-/tmp}/check-doc-paths.$$"
echo "== docs: every repository path named in README.md and docs/ exists"
