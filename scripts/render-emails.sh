#!/usr/bin/env bash
# Render the emails a tenant's admins get (the demo roster through the real stages, in memory) with
# headless Chromium, the engine behind most webmail, into PNGs: docs/emails/ by default.
#   scripts/render-emails.sh [OUT_DIR]
# Needs chromium (Debian: apt-get install chromium); not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/emails}
html=target/emails
mkdir -p "$out" "$html"
cargo run -q -p tests --example sample_emails -- "$html"
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[[ -n $browser ]] || { echo "chromium not found: apt-get install chromium" >&2; exit 1; }
for page in "$html"/*.html; do
  name=$(basename "${page%.html}")
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size=680,1500 --screenshot="$out/$name.png" "file://$PWD/$page" 2>/dev/null
  cp "$page" "$out/$name.html"
  cp "${page%.html}.txt" "$out/$name.txt"
  echo "$out/$name.png"
done
