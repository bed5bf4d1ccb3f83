#!/usr/bin/env bash
# `make demo` (after `make up`): create the demo tenant, submit the 1,000-row sample roster,
# print the job summary, where the result files are, and the email the admins received.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLI=target/debug/rosterdrop

echo "== 1. tenant"
$CLI tenant put --file samples/demo-tenant.json
echo
echo "== 2. submit samples/demo-roster.xlsx (1,000 rows, about 6% with mistakes)"
rc=0
$CLI submit samples/demo-roster.xlsx --tenant demo --wait | tee .local/demo-summary.txt || rc=$?
job=$(awk '/^job /{print $2}' .local/demo-summary.txt)
echo
echo "== 3. result files (download with: $CLI results $job --out results/)"
$CLI results "$job" --out .local/demo-results
echo
echo "== 4. email sent to the tenant admins (read back from LocalStack's /_aws/ses)"
.local/venv/bin/python scripts/show_mail.py admin@demo.example.com
# Exit 1 from submit only means some rows failed, which the sample is built to show.
[[ $rc -le 1 ]]
